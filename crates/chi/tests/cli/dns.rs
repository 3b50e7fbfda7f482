//! Every command with `--registry dns://...` against a real dnsmasq on loopback: discover, watch,
//! select, proxy and xds read the SRV records; agent refuses to register into DNS, which is
//! read-only.

use std::collections::BTreeMap;

use chi_test_support::dns::{Dnsmasq, Record};
use serde_json::Value;

use crate::proxy::{Backend, start_proxy};
use crate::support::{Proc, chi, discover_json, eventually, http_get, registration, run, stderr};
use crate::xds::{Client, Lang, SERVICE, python, serve_backends, start_xds, write_bootstrap};

/// `dns://SERVER?srv=_{service}._tcp.svc.test`.
fn url(server: &Dnsmasq) -> String {
    format!(
        "dns://{}?srv=_{{service}}._tcp.svc.test&min_refresh=100ms&max_refresh=1s",
        server.addr()
    )
}

/// SRV records of `service` at 127.0.0.1: (target name, port, weight) each.
fn records(service: &str, backends: &[(&str, u16, u16)]) -> Vec<Record> {
    let mut out = Vec::new();
    for (name, port, weight) in backends {
        let target = format!("{name}.svc.test");
        out.push(Record::srv(
            &format!("_{service}._tcp.svc.test"),
            &target,
            *port,
            0,
            *weight,
        ));
        out.push(Record::addr(&target, "127.0.0.1"));
    }
    out
}

#[test]
fn discover_watch_select_and_agent_with_dns() {
    let mut server = Dnsmasq::start(&records("web", &[("a", 9101, 3), ("b", 9102, 1)]));
    let url = url(&server);

    let list = discover_json(&url, "web", &[]);
    let mut got: Vec<(u64, u64)> = list
        .iter()
        .map(|i| {
            (
                i["port"].as_u64().unwrap_or(0),
                i["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [(9101, 3), (9102, 1)]);
    assert_eq!(list[0]["meta"]["dns_priority"], "0");

    // Weighted round robin over the SRV weights: 3 to 1.
    let out = run(&[
        "select",
        "web",
        "--strategy",
        "weighted_round_robin",
        "--count",
        "400",
        "-o",
        "json",
        "--registry",
        &url,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let picks: BTreeMap<String, u64> = v["picks"]
        .as_array()
        .expect("picks")
        .iter()
        .map(|p| {
            (
                p["address"].as_str().unwrap_or_default().to_owned(),
                p["picks"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(picks.get("127.0.0.1:9101"), Some(&300), "{picks:?}");
    assert_eq!(picks.get("127.0.0.1:9102"), Some(&100), "{picks:?}");

    let mut cmd = chi();
    cmd.args(["watch", "web", "-o", "json", "--registry", &url]);
    let mut watch = Proc::spawn(cmd);
    let reset: Value =
        serde_json::from_str(&watch.wait_line("reset", |l| l.contains("\"reset\""))).expect("json");
    assert_eq!(reset["instances"].as_array().map(Vec::len), Some(2));
    server.restart_with(&records(
        "web",
        &[("a", 9101, 3), ("b", 9102, 1), ("c", 9103, 1)],
    ));
    watch.wait_line("added c", |l| l.contains("\"added\"") && l.contains("9103"));
    server.restart_with(&records("web", &[("a", 9101, 3), ("c", 9103, 1)]));
    watch.wait_line("removed b", |l| {
        l.contains("\"removed\"") && l.contains("9102")
    });

    // The agent registers, and DNS takes no registration: a clear refusal, exit 2.
    let file = crate::support::yaml(&registration("web", 9104, "v1", ""));
    let out = chi()
        .arg("agent")
        .arg("-c")
        .arg(&file.1)
        .args(["--admin", "127.0.0.1:0", "--registry", &url])
        .output()
        .expect("run chi agent");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("DNS is read-only"),
        "{}",
        stderr(&out)
    );

    // A bad URL is refused with the parameter named.
    let out = run(&[
        "discover",
        "web",
        "--registry",
        "dns://127.0.0.1?a={service}.svc.test",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--registry port: is required with a"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_over_dns() {
    let a = Backend::start("alpha").await;
    let b = Backend::start("beta").await;
    let mut server = Dnsmasq::start(&records("web", &[("a", a.port, 1), ("b", b.port, 1)]));
    let proxy = start_proxy("round_robin", &url(&server));
    let addr = proxy.addr.clone();
    let spread = move |n: usize| {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let (status, body) = http_get(&addr, "/web/hello");
            assert_eq!(status, 200, "{body}");
            let name = body
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            *seen.entry(name).or_insert(0u32) += 1;
        }
        seen
    };
    let seen = tokio::task::spawn_blocking({
        let spread = spread.clone();
        move || spread(20)
    })
    .await
    .expect("requests");
    assert!(
        seen.get("alpha") >= Some(&5) && seen.get("beta") >= Some(&5),
        "both SRV targets serve: {seen:?}"
    );

    // beta leaves DNS: the proxy follows within the cache refresh.
    server.restart_with(&records("web", &[("a", a.port, 1)]));
    tokio::task::spawn_blocking(move || {
        eventually("beta gone from the proxy", || {
            let seen = spread(10);
            seen.len() == 1 && seen.contains_key("alpha")
        });
    })
    .await
    .expect("requests");
}

#[test]
fn xds_serves_what_dns_holds_to_grpc_clients() {
    let (_servers, ports) = serve_backends(&["d1", "d2"]);
    let srv = records(SERVICE, &[("d1", ports["d1"], 1), ("d2", ports["d2"], 1)]);
    let mut server = Dnsmasq::start(&srv);
    let (_xds, xds_addr) = start_xds(&url(&server), "127.0.0.1:0", None);
    let dir = tempfile::tempdir().expect("tempdir");
    let bootstrap = write_bootstrap(dir.path(), &xds_addr, "eu-west-1a");
    let mut client = Client::start(&Lang::Grpcio(python()), &bootstrap);
    let counts = client.until("both DNS backends to get calls", 100, |c| c.len() == 2);
    eprintln!("xds over dns, two SRV records: {counts:?}");
    server.restart_with(&records(SERVICE, &[("d1", ports["d1"], 1)]));
    client.until("d2 to get no calls once it left DNS", 40, |c| {
        c.keys().map(String::as_str).collect::<Vec<_>>() == ["d1"]
    });
}
