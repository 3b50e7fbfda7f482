//! `chi proxy` with real backend servers: distribution, routing, retries while a backend dies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

use crate::support::{Agent, Proc, chi, http_get, registration, yaml};

/// An HTTP/1.1 backend answering its name; `kill` closes the listener and every connection.
pub(crate) struct Backend {
    pub(crate) port: u16,
    pub(crate) hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub(crate) conns: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    pub(crate) async fn start(name: &'static str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let conns = Arc::new(AtomicU64::new(0));
        let accepted = conns.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let counter = counter.clone();
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let body = format!("{name} {}", req.uri().path());
                            async move {
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from(body),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            port,
            hits,
            conns,
            task,
        }
    }

    /// Kills the server: the listener and all its connections go away at once.
    pub(crate) fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The proxy's config: fast cache refresh, 3 attempts, routing on, `strategy`.
pub(crate) fn proxy_config(strategy: &str) -> String {
    format!(
        "service_discovery:
  discovery:
    cache:
      ttl: \"5s\"
      refresh_interval: \"200ms\"
    retry:
      max_attempts: 3
      initial_interval: \"10ms\"
      max_interval: \"100ms\"
  load_balancer:
    strategy: \"{strategy}\"
  routing:
    enable_version_routing: true
    enable_geo_routing: true
    default_version: \"v1\"
    regions:
      us-east-1: [\"us-east-1a\"]
      us-west-2: [\"us-west-2a\"]
"
    )
}

/// A running `chi proxy` and its addresses.
pub(crate) struct ProxyProc {
    _proc: Proc,
    pub(crate) addr: String,
    pub(crate) admin: String,
    _config: (tempfile::TempDir, std::path::PathBuf),
}

pub(crate) fn start_proxy(strategy: &str, registry: &str) -> ProxyProc {
    start_proxy_with(strategy, registry, &[])
}

/// [`start_proxy`] with more arguments.
pub(crate) fn start_proxy_with(strategy: &str, registry: &str, extra: &[&str]) -> ProxyProc {
    start_proxy_config(&proxy_config(strategy), registry, extra)
}

/// A proxy on the config `text`.
pub(crate) fn start_proxy_config(text: &str, registry: &str, extra: &[&str]) -> ProxyProc {
    let file = yaml(text);
    let mut cmd = chi();
    cmd.args(["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("-c")
        .arg(&file.1)
        .args(["--registry", registry])
        .args(extra);
    let mut proc = Proc::spawn(cmd);
    let line = proc.wait_line("listening", |l| l.contains("listening on http://"));
    let mut urls = line.split("http://").skip(1).map(|s| {
        s.split(|c: char| c == ';' || c.is_whitespace())
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let addr = urls.next().expect("listen address");
    let admin = urls.next().expect("admin address");
    ProxyProc {
        _proc: proc,
        addr,
        admin,
        _config: file,
    }
}

/// One backend's registration: `name` `version` in `region`, weight `weight`.
fn backend_agent(registry: &str, port: u16, version: &str, region: &str, weight: u32) -> Agent {
    Agent::start(
        &registration(
            "web",
            port,
            version,
            &format!("    weight: {weight}\n    meta:\n      region: \"{region}\"\n"),
        ),
        &["--registry", registry],
    )
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// GET through the proxy; status, upstream id header and body.
async fn get(
    client: &HttpClient,
    proxy: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let mut req = Request::get(format!("http://{proxy}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("the proxy answers");
    let status = resp.status();
    let upstream = resp
        .headers()
        .get("x-chi-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        upstream,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Counts of backends (first word of the body) over `n` requests.
pub(crate) async fn spread(
    client: &HttpClient,
    proxy: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (status, _, body) = get(client, proxy, "/web/hello", headers).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let name = body
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// A host agent for the registry, three backends registered in it; the proxy is left to the test.
pub(crate) struct Fleet {
    pub(crate) host: Agent,
    pub(crate) backends: Vec<Backend>,
    _agents: Vec<Agent>,
}

pub(crate) async fn fleet(specs: &[(&'static str, &str, &str, u32)]) -> Fleet {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let url = host.url();
    let mut backends = Vec::new();
    let mut agents = Vec::new();
    for (name, version, region, weight) in specs {
        let b = Backend::start(name).await;
        agents.push(backend_agent(&url, b.port, version, region, *weight));
        backends.push(b);
    }
    Fleet {
        host,
        backends,
        _agents: agents,
    }
}

pub(crate) async fn wait_ready(client: &HttpClient, proxy: &str, backends: usize) {
    // The proxy discovers on the first request; wait until every backend is listed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let counts = spread(client, proxy, backends * 4, &[]).await;
        if counts.len() >= backends {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backends not all seen: {counts:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_path_and_host_and_errors() {
    let f = fleet(&[("b1", "v1", "us-east-1", 1)]).await;
    let proxy = start_proxy("round_robin", &f.host.url());
    let c = client();
    let (status, upstream, body) = get(&c, &proxy.addr, "/web/api/x?q=1", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "b1 /api/x");
    assert_eq!(upstream, format!("web-127.0.0.1-{}", f.backends[0].port));
    // Reached by its own DNS name, the proxy routes by path: the Host header names no service.
    let (status, _, body) = get(
        &c,
        &proxy.addr,
        "/web/api/y",
        &[("host", "chi-proxy.internal:15001")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "b1 /api/y");
    let (status, _, body) = get(&c, &proxy.addr, "/api/y", &[("host", "web")]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("`api`"), "{body}");
    let (status, _, body) = get(&c, &proxy.addr, "/nobody/x", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("nobody"), "{body}");
    let (status, _, _) = get(&c, &proxy.addr, "/", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // HTTP/2 with prior knowledge (h2c) on the same port.
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let resp = h2
        .request(
            Request::get(format!("http://{}/web/h2", proxy.addr))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("h2 answer");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"b1 /h2");
    let (status, metrics) = http_get(&proxy.admin, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("chi_proxy_requests_total{service=\"web\",code=\"2xx\"}"),
        "{metrics}"
    );
    // The Go sketch's metric names, from the library.
    assert!(
        metrics.contains("load_balancer_selections_total{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("service_discovery_requests_total{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_by_host_when_asked() {
    let f = fleet(&[("b1", "v1", "us-east-1", 1)]).await;
    let proxy = start_proxy_with("round_robin", &f.host.url(), &["--route-by", "host"]);
    let c = client();
    // The Host header's first label names the service; the path goes as it is.
    for host in [
        "web",
        "web:15001",
        "web.internal",
        "web.svc.cluster.local:80",
    ] {
        let (status, _, body) = get(&c, &proxy.addr, "/api/y", &[("host", host)]).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
        assert_eq!(body, "b1 /api/y", "{host}");
    }
    // A Host that is an address names no service: the path does.
    let (status, _, body) = get(&c, &proxy.addr, "/web/api/z", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "b1 /api/z");
    // Host routing was asked for: a name that is no service is not routed by path.
    let (status, _, body) = get(
        &c,
        &proxy.addr,
        "/web/api/z",
        &[("host", "chi-proxy.internal")],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("`chi-proxy`"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_retries_on_another_instance_while_a_backend_dies() {
    let f = fleet(&[
        ("b1", "v1", "us-east-1", 1),
        ("b2", "v1", "us-east-1", 1),
        ("b3", "v1", "us-east-1", 1),
    ])
    .await;
    let proxy = start_proxy("round_robin", &f.host.url());
    let c = client();
    wait_ready(&c, &proxy.addr, 3).await;

    // Four clients in parallel; b2 dies (listener and open connections) a third of the way in.
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let addr = proxy.addr.clone();
        let failures = failures.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..150 {
                let (status, _, _) = get(&c, &addr, "/web/work", &[]).await;
                if status != StatusCode::OK {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while done.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let b2_before = f.backends[1].hits.load(Ordering::Relaxed);
    f.backends[1].kill();
    for t in tasks {
        t.await.expect("client task");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no client request may fail"
    );
    assert!(b2_before > 0);
    // The survivors served the rest.
    let after: u64 =
        f.backends[0].hits.load(Ordering::Relaxed) + f.backends[2].hits.load(Ordering::Relaxed);
    assert!(after >= 400, "b1 + b3 served {after}");
    // Failed attempts were few: the outlier detector ejected b2 after 3 in a row.
    let (_, metrics) = http_get(&proxy.admin, "/metrics");
    let failed: u64 = metrics
        .lines()
        .find(|l| l.starts_with("chi_proxy_attempts_total{service=\"web\",outcome=\"failure\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        (1..=12).contains(&failed),
        "failed attempts {failed}\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_distribution_per_strategy() {
    let f = fleet(&[
        ("b1", "v1", "us-east-1", 1),
        ("b2", "v1", "us-east-1", 2),
        ("b3", "v1", "us-east-1", 3),
    ])
    .await;
    let c = client();
    let expect = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };

    let rr = start_proxy("round_robin", &f.host.url());
    wait_ready(&c, &rr.addr, 3).await;
    assert_eq!(
        spread(&c, &rr.addr, 300, &[]).await,
        expect(&[("b1", 100), ("b2", 100), ("b3", 100)])
    );

    let wrr = start_proxy("weighted_round_robin", &f.host.url());
    wait_ready(&c, &wrr.addr, 3).await;
    assert_eq!(
        spread(&c, &wrr.addr, 300, &[]).await,
        expect(&[("b1", 50), ("b2", 100), ("b3", 150)])
    );

    let ch = start_proxy("consistent_hash", &f.host.url());
    wait_ready(&c, &ch.addr, 3).await;
    let sticky = spread(&c, &ch.addr, 50, &[("x-hash-key", "user-42")]).await;
    assert_eq!(sticky.len(), 1, "one key, one backend: {sticky:?}");
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..30 {
        let key = format!("user-{k}");
        let one = spread(&c, &ch.addr, 3, &[("x-hash-key", key.as_str())]).await;
        assert_eq!(one.len(), 1, "{key}: {one:?}");
        seen.extend(one.into_keys());
    }
    assert!(seen.len() >= 2, "30 keys spread over {seen:?}");

    let lc = start_proxy("least_connections", &f.host.url());
    wait_ready(&c, &lc.addr, 3).await;
    let counts = spread(&c, &lc.addr, 90, &[]).await;
    assert_eq!(counts.values().sum::<usize>(), 90);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_routes_by_version_and_region() {
    let f = fleet(&[
        ("b1", "v1", "us-east-1", 1),
        ("b2", "v2", "us-east-1", 1),
        ("b3", "v1", "us-west-2", 1),
    ])
    .await;
    let proxy = start_proxy("round_robin", &f.host.url());
    let c = client();
    // Wait until the proxy lists all three (v2 only answers when asked for).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let v1 = spread(&c, &proxy.addr, 6, &[]).await;
        let v2 = spread(&c, &proxy.addr, 2, &[("x-service-version", "v2")]).await;
        if v1.len() == 2 && v2.contains_key("b2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v1:?} {v2:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let only = |name: &str, n: usize| -> BTreeMap<String, usize> { [(name.to_owned(), n)].into() };
    assert_eq!(
        spread(&c, &proxy.addr, 20, &[("x-service-version", "v2")]).await,
        only("b2", 20)
    );
    assert_eq!(
        spread(&c, &proxy.addr, 20, &[("x-client-region", "us-west-2")]).await,
        only("b3", 20)
    );
    assert_eq!(
        spread(&c, &proxy.addr, 20, &[("x-client-region", "us-east-1")]).await,
        only("b1", 20)
    );
    // No headers: the default version (v1) in any region.
    let default = spread(&c, &proxy.addr, 20, &[]).await;
    assert_eq!(
        default.keys().collect::<Vec<_>>(),
        ["b1", "b3"],
        "{default:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_warm_up_shows_progress_and_a_summary() {
    let f = fleet(&[("b1", "v1", "us-east-1", 1)]).await;
    let file = yaml(&proxy_config("round_robin"));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr.log");
    let mut cmd = chi();
    cmd.args(["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("-c")
        .arg(&file.1)
        .args(["--registry", &f.host.url(), "--workers", "1"])
        // `all` lists `registry-host` and `web`; `nosuch` has no instances; `bad/name` fails.
        .args(["--warm-up", "all,nosuch,bad/name"]);
    let err = std::fs::File::create(&log).expect("log file");
    let mut proc = Proc::spawn_with_stderr(cmd, err.into());
    let line = proc.wait_line("listening", |l| l.contains("listening on http://"));
    assert!(line.contains("(1 worker(s))"), "{line}");
    // The warm-up ends before the proxy listens, so its summary is already written.
    let text = std::fs::read_to_string(&log).expect("stderr");
    let summary = text
        .lines()
        .find(|l| l.starts_with("warm-up: 4/4 services, 1 failed, 1 without instances in "))
        .unwrap_or_else(|| panic!("no warm-up summary in stderr: {text}"));
    assert!(summary.ends_with('s'), "{summary}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning: warm-up of bad/name: ")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("hint: ")), "{text}");
    // The warmed service is served at once.
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address");
    let (status, _, body) = get(&client(), addr, "/web/x", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[test]
fn proxy_warm_up_all_fails_with_a_hint_when_the_registry_is_down() {
    let port = crate::support::closed_port();
    let out = crate::support::run(&[
        "proxy",
        "--registry",
        &format!("chi://127.0.0.1:{port}"),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--warm-up",
        "all",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = crate::support::stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("error: --warm-up all: cannot list the registry's services: "),
        "{err}"
    );
    assert!(
        lines[1].starts_with("hint: name the services instead"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_keeps_upstream_connections_alive() {
    let f = fleet(&[("b1", "v1", "us-east-1", 1)]).await;
    let proxy = start_proxy_with("round_robin", &f.host.url(), &["--workers", "1"]);
    let c = client();
    // Requests one after another through one worker: one upstream connection, handed back
    // after each response body.
    let n = 40;
    for i in 0..n {
        let (status, _, body) = get(&c, &proxy.addr, &format!("/web/{i}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, format!("b1 /{i}"));
    }
    assert_eq!(f.backends[0].hits.load(Ordering::Relaxed), n);
    let conns = f.backends[0].conns.load(Ordering::Relaxed);
    assert_eq!(
        conns, 1,
        "{n} sequential requests opened {conns} upstream connections"
    );
}

/// A backend that answers `ok` after `delay`, on a thread of its own.
fn slow_backend(delay: std::time::Duration) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                std::thread::sleep(delay);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

/// `load_balancer.circuit_breaker.max_requests: 1` on one slow instance: a second request while
/// the first runs is refused at once with 503 naming the setting, and counted in the metrics.
#[test]
fn proxy_circuit_breaker_fails_fast_and_counts() {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let port = slow_backend(std::time::Duration::from_millis(800));
    let _agent = Agent::start(
        &registration("slow", port, "v1", ""),
        &["--registry", &host.url()],
    );
    let config = proxy_config("round_robin").replace(
        "    strategy: \"round_robin\"\n",
        "    strategy: \"round_robin\"\n    circuit_breaker:\n      max_requests: 1\n",
    );
    let proxy = start_proxy_config(&config, &host.url(), &[]);
    crate::support::eventually("the proxy to reach the slow backend", || {
        http_get(&proxy.addr, "/slow/warm").0 == 200
    });
    let addr = proxy.addr.clone();
    let first = std::thread::spawn(move || http_get(&addr, "/slow/one"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let (status, body) = http_get(&proxy.addr, "/slow/two");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("circuit_breaker.max_requests"), "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_millis(300),
        "fails fast"
    );
    assert_eq!(first.join().expect("first").0, 200);
    let (_, metrics) = http_get(&proxy.admin, "/metrics");
    assert!(
        metrics.contains("chi_proxy_circuit_breaker_overflows_total{service=\"slow\"} 1"),
        "{metrics}"
    );
}

/// `load_balancer.slow_start` with round robin: a backend that joins a warm pair gets a small
/// share at first (its weight ramps from 10 %, through weighted round robin) and an even third
/// once the window is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_slow_start_ramps_a_joining_backend() {
    let f = fleet(&[("b1", "v1", "us-east-1", 1), ("b2", "v1", "us-east-1", 1)]).await;
    let config = proxy_config("round_robin").replace(
        "    strategy: \"round_robin\"\n",
        "    strategy: \"round_robin\"\n    slow_start:\n      window: \"6s\"\n",
    );
    let proxy = start_proxy_config(&config, &f.host.url(), &[]);
    let c = client();
    wait_ready(&c, &proxy.addr, 2).await;
    let b3 = Backend::start("b3").await;
    let _agent = backend_agent(&f.host.url(), b3.port, "v1", "us-east-1", 1);
    // The ramp starts when the proxy first sees b3.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !spread(&c, &proxy.addr, 10, &[]).await.contains_key("b3") {
        assert!(std::time::Instant::now() < deadline, "b3 never picked");
    }
    let share = |counts: &BTreeMap<String, usize>| {
        let all: usize = counts.values().sum();
        counts.get("b3").copied().unwrap_or(0) as f64 / all as f64
    };
    let early = spread(&c, &proxy.addr, 200, &[]).await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let late = spread(&c, &proxy.addr, 300, &[]).await;
    assert!(share(&early) < 0.15, "early: {early:?}");
    assert!((0.28..=0.39).contains(&share(&late)), "late: {late:?}");
    println!(
        "slow start through chi proxy: b3 {:.1} % at first, {:.1} % after the window",
        100.0 * share(&early),
        100.0 * share(&late)
    );
}
