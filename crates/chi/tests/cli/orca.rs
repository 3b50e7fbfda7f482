//! `chi proxy` with `orca_weighted_round_robin`: three HTTP backends report their load in
//! Envoy's `endpoint-load-metrics` header (one in each form: `TEXT`, `JSON`, `BIN`), and the
//! proxy splits the calls by it.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::task::JoinHandle;

use crate::support::{Agent, Proc, chi, registration, yaml};

/// An HTTP/1.1 backend answering its name, every answer with `report` as its
/// `endpoint-load-metrics` header.
struct Backend {
    port: u16,
    task: JoinHandle<()>,
}

impl Backend {
    async fn start(name: &'static str, report: String) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let report = report.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req: Request<_>| {
                        let response = Response::builder()
                            .header("endpoint-load-metrics", report.as_str())
                            .body(Full::new(Bytes::from(name)));
                        async move { response }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { port, task }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The binary form of a report of `qps` at CPU `utilization`, by the library's own message.
fn bin_report(qps: f64, utilization: f64) -> String {
    let report = chi_discovery::orca::OrcaLoadReport {
        rps_fractional: qps,
        cpu_utilization: utilization,
        ..Default::default()
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(report.encode_to_vec());
    format!("BIN {b64}")
}

const CONFIG: &str = "service_discovery:
  discovery:
    cache:
      ttl: \"5s\"
      refresh_interval: \"200ms\"
  load_balancer:
    strategy: \"orca_weighted_round_robin\"
    orca:
      blackout_period: \"0s\"
      weight_update_period: \"100ms\"
";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// GET `/web/x` through the proxy: the backend's name and its report as the client saw it.
async fn call(client: &HttpClient, proxy: &str) -> (String, Option<String>) {
    let req = Request::get(format!("http://{proxy}/web/x"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = client.request(req).await.expect("the proxy answers");
    assert!(resp.status().is_success(), "{}", resp.status());
    let report = resp
        .headers()
        .get("endpoint-load-metrics")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (String::from_utf8_lossy(&body).into_owned(), report)
}

async fn counts(client: &HttpClient, proxy: &str, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        *counts.entry(call(client, proxy).await.0).or_insert(0) += 1;
    }
    counts
}

/// Backends reporting CPU utilization 0.2 / 0.4 / 0.8 at 100 queries per second get about
/// 4 : 2 : 1 of the calls (weights 500, 250, 125); the reports reach the client unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_weighs_backends_by_their_load_reports() {
    let host = Agent::start(&registration("registry-host", 1, "v1", ""), &[]);
    let text = "TEXT rps_fractional=100, cpu_utilization=0.2".to_owned();
    let backends = [
        Backend::start("b1", text.clone()).await,
        Backend::start(
            "b2",
            r#"JSON {"rpsFractional": 100, "cpu_utilization": 0.4}"#.to_owned(),
        )
        .await,
        Backend::start("b3", bin_report(100.0, 0.8)).await,
    ];
    let _agents: Vec<Agent> = backends
        .iter()
        .map(|b| {
            Agent::start(
                &registration("web", b.port, "v1", ""),
                &["--registry", &host.url()],
            )
        })
        .collect();
    let file = yaml(CONFIG);
    let mut cmd = chi();
    cmd.args(["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("-c")
        .arg(&file.1)
        .args(["--registry", &host.url()]);
    let mut proc = Proc::spawn(cmd);
    let line = proc.wait_line("listening", |l| l.contains("listening on http://"));
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split([' ', ';']).next())
        .expect("listen address")
        .to_owned();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    // Every backend listed and reporting (round robin until then), then one table from the
    // reports: the first check after the 100 ms update period.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while counts(&client, &addr, 12).await.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every backend seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let _ = counts(&client, &addr, 32).await;

    let split = counts(&client, &addr, 700).await;
    println!(
        "chi proxy, orca_weighted_round_robin, 700 calls to backends at utilization 0.2 / 0.4 / 0.8: {split:?}"
    );
    let share = |b: &str| split.get(b).copied().unwrap_or(0);
    assert!((380..=420).contains(&share("b1")), "{split:?}");
    assert!((180..=220).contains(&share("b2")), "{split:?}");
    assert!((80..=120).contains(&share("b3")), "{split:?}");

    // As Envoy does, the proxy leaves the report in the answer.
    let reported: Vec<Option<String>> = {
        let mut seen = Vec::new();
        for _ in 0..7 {
            let (name, report) = call(&client, &addr).await;
            if name == "b1" {
                seen.push(report);
            }
        }
        seen
    };
    assert!(!reported.is_empty());
    assert!(reported.iter().all(|r| r.as_deref() == Some(text.as_str())));
}
