//! chi's ORCA against gRPC's Node implementation (@grpc/grpc-js 1.14, installed by
//! `scripts/xds-clients`): grpc-js reads chi's out-of-band stream and per-call trailer, and chi
//! reads grpc-js's out-of-band stream. A missing Node client is a failure, never a skip.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chi_discovery::balance::ReportedLoad;
use chi_discovery::orca::{OpenRcaServer, ReportLayer, ServerMetrics, oob};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The node_modules holding @grpc/grpc-js (installed when missing).
fn node_modules() -> PathBuf {
    let out = Command::new(repo_root().join("scripts/xds-clients"))
        .arg("node-path")
        .output()
        .expect("run scripts/xds-clients");
    assert!(
        out.status.success(),
        "scripts/xds-clients node-path failed (the ORCA interop tests need it; CI={}): {}",
        std::env::var("CI").unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn script() -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/orca_grpc_js.js"))
        .env("NODE_PATH", node_modules());
    cmd
}

/// Runs the script in `mode` against `addr` (on a blocking thread); its stdout lines as JSON.
async fn run(mode: &'static str, addr: String) -> Vec<Value> {
    let out = tokio::task::spawn_blocking(move || {
        script().args([mode, &addr]).output().expect("run node")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "node {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A chi tonic server: health (serving ""), `OpenRcaService` and the report layer over
/// `metrics`. Its `host:port`.
async fn chi_server(metrics: Arc<ServerMetrics>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let oob = OpenRcaServer::new(metrics.clone()).min_interval(Duration::from_millis(50));
    tokio::spawn(async move {
        let _keep = reporter;
        let _ = Server::builder()
            .layer(ReportLayer::new(metrics))
            .add_service(health)
            .add_service(oob)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
    });
    addr
}

fn metrics() -> Arc<ServerMetrics> {
    let m = Arc::new(ServerMetrics::new());
    m.set_application_utilization(0.25);
    m.set_cpu_utilization(0.5);
    m.set_qps(100.0);
    m.set_named_metric("queue", 3.0);
    m
}

#[tokio::test]
async fn grpc_js_reads_chis_out_of_band_stream() {
    let addr = chi_server(metrics()).await;
    let reports = run("oob", addr).await;
    assert_eq!(reports.len(), 3, "{reports:?}");
    for r in &reports {
        assert_eq!(r["application_utilization"], 0.25, "{r}");
        assert_eq!(r["cpu_utilization"], 0.5, "{r}");
        assert_eq!(r["rps_fractional"], 100.0, "{r}");
        assert_eq!(r["named_metrics"]["queue"], 3.0, "{r}");
    }
}

#[tokio::test]
async fn grpc_js_reads_chis_per_call_trailer() {
    let addr = chi_server(metrics()).await;
    let reports = run("call", addr).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["application_utilization"], 0.25, "{reports:?}");
    assert_eq!(reports[0]["named_metrics"]["queue"], 3.0, "{reports:?}");
}

/// A node process, killed and reaped when dropped (also when an assertion fails first).
struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn chi_reads_grpc_js_out_of_band_stream() {
    let mut server = Node(
        script()
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node serve"),
    );
    let stdout = server.0.stdout.take().expect("stdout");
    let port = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("port ").map(str::to_owned))
    })
    .await
    .expect("join")
    .expect("grpc-js prints its port");
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect_lazy();
    let mut stream = oob::stream_core_metrics(channel, Duration::from_millis(100))
        .await
        .expect("StreamCoreMetrics");
    let report = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a report in time")
        .expect("a report")
        .expect("ok");
    drop(server);
    assert_eq!(
        (report.cpu_utilization, report.application_utilization),
        (0.3, 0.6)
    );
    assert_eq!((report.rps_fractional, report.eps), (50.0, 5.0));
    assert_eq!(report.utilization["disk"], 0.25);
    assert!(chi_discovery::orca::check(&report).is_ok());
    // A58's weight of it: 50 / (0.6 + 5 / 50 * 1.0).
    let w = ReportedLoad::from(&report).weight(1.0);
    assert!((w - 50.0 / 0.7).abs() < 1e-9, "{w}");
}
