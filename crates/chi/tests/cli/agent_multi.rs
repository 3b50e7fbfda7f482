//! `chi agent` with Consul, etcd and Nacos (rnacos) enabled in one config, started while Nacos
//! is down: it registers in the other two at once, says which backend does not hold the
//! registration (stdout, stderr, `/health`, `/metrics`), and registers in Nacos when it comes
//! back. The metrics are read through a real scrape of the agent's `/metrics`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chi_test_support::consul::ConsulAgent;
use chi_test_support::etcd::Etcd;
use chi_test_support::nacos::NacosServer;

use crate::real::block_on;
use crate::support::{Proc, chi, discover_json, http_get, http_server, ids, yaml};

const SERVICE: &str = "agent-multi";

fn config(port: u16, consul: &str, etcd: &str, nacos: u16) -> String {
    format!(
        r#"service_discovery:
  registration:
    name: "{SERVICE}"
    address: "127.0.0.1"
    port: {port}
    health_check:
      http: "/health"
      interval: "1s"
      timeout: "500ms"
  registries:
    consul:
      enabled: true
      address: "{consul}"
    etcd:
      enabled: true
      endpoints: ["{etcd}"]
    nacos:
      enabled: true
      server_configs:
        - ip: "127.0.0.1"
          port: {nacos}
"#
    )
}

/// The value of `name{...backend="BACKEND"...}` in a scrape, if the series is there.
fn sample(metrics: &str, name: &str, backend: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("backend=\"{backend}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `PUT` of a JSON body on the admin port; the status and body.
fn http_put(addr: &str, path: &str, json: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{json}",
        json.len()
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Polls `f` until true, for up to `within`; the time it took.
fn within(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn agent_started_while_nacos_is_down_registers_in_the_others_then_in_nacos() {
    let _heavy = block_on(chi_test_support::heavy());
    let consul = block_on(ConsulAgent::start());
    let etcd = block_on(Etcd::single());
    let mut nacos = NacosServer::start();
    nacos.kill();
    let registries = [
        ("consul", format!("consul://{}", consul.addr())),
        ("etcd", format!("etcd://{}", etcd.endpoint())),
        ("nacos", format!("nacos://{}", nacos.addr())),
    ];
    let backend = http_server(200);
    let id = format!("{SERVICE}-127.0.0.1-{backend}");
    let file = yaml(&config(
        backend,
        &consul.addr(),
        &etcd.endpoint(),
        nacos.http_port,
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stderr.log");
    let mut cmd = chi();
    cmd.args(["agent", "--admin", "127.0.0.1:0", "-c"])
        .arg(&file.1);
    let started = Instant::now();
    let mut agent = Proc::spawn_with_stderr(
        cmd,
        Stdio::from(std::fs::File::create(&log).expect("log file")),
    );
    let line = agent.wait_line("the admin address", |l| l.contains("admin on http://"));
    let admin = line
        .rsplit("http://")
        .next()
        .expect("address")
        .trim()
        .to_owned();
    for b in ["consul", "etcd"] {
        let line = format!("registered {id} in {b}");
        // Printed as it happens: before the admin line or after it.
        if !agent.seen.contains(&line) {
            agent.wait_line(&line, |l| l == line);
        }
    }
    let up = started.elapsed();
    // Not held up by Nacos' client, which retries a refused connection for about 4.5 s.
    assert!(
        up < Duration::from_secs(4),
        "registered in consul and etcd only {up:?} after the start"
    );
    for (b, url) in &registries[..2] {
        assert_eq!(ids(&discover_json(url, SERVICE, &[])), [id.as_str()], "{b}");
    }
    let stderr = std::fs::read_to_string(&log).expect("stderr");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("warning: nacos does not hold {id} ("))),
        "{stderr}"
    );
    let (status, body) = http_get(&admin, "/health");
    assert_eq!(status, 200, "served by two of three: {body}");
    assert!(body.contains("\"status\":\"partial\""), "{body}");
    let (status, metrics) = http_get(&admin, "/metrics");
    assert_eq!(status, 200);
    for (b, want) in [("consul", 1.0), ("etcd", 1.0), ("nacos", 0.0)] {
        assert_eq!(
            sample(&metrics, "chi_registration_backend_up", b),
            Some(want),
            "{b}: {metrics}"
        );
    }
    assert!(
        sample(&metrics, "chi_registration_errors_total", "nacos").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "chi_registration_errors_total", "consul"),
        Some(0.0)
    );
    // Registering through the agent's admin API: a partial registration is a 502 that says
    // where the instance is and where it is not (a `chi://` client's manager retries it).
    let (status, body) = http_put(
        &admin,
        "/v1/services/other/instances/other-1",
        r#"{"id":"other-1","name":"other","address":"127.0.0.1","port":1}"#,
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("instance `other-1` is registered in consul, etcd but not in [nacos]"),
        "{body}"
    );

    // Nacos comes back: the agent connects and registers there.
    nacos.restart();
    let back = Instant::now();
    agent.wait_line("registered in nacos", |l| {
        l == format!("registered {id} in nacos")
    });
    let registered = back.elapsed();
    let listed = within("nacos lists it", Duration::from_secs(20), || {
        ids(&discover_json(&registries[2].1, SERVICE, &[])) == [id.clone()]
    });
    let (status, body) = http_get(&admin, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (_, metrics) = http_get(&admin, "/metrics");
    for b in ["consul", "etcd", "nacos"] {
        assert_eq!(
            sample(&metrics, "chi_registration_backend_up", b),
            Some(1.0),
            "{b}: {metrics}"
        );
        assert_eq!(
            sample(&metrics, "chi_registration_reregistrations_total", b),
            Some(0.0),
            "{b}: {metrics}"
        );
    }
    assert!(
        registered < Duration::from_secs(20),
        "registered in nacos {registered:?} after it came back"
    );
    println!(
        "[reliability] multi: chi agent started with nacos down: registered in consul and etcd {up:?} after \
         its start; in nacos {registered:?} after nacos served again (listed there after {:?})",
        registered + listed
    );

    let (ok, rest) = agent.terminate();
    assert!(ok, "{:?}", agent.seen);
    assert!(
        rest.iter()
            .any(|l| l.starts_with(&format!("deregistered {id}"))),
        "{rest:?}"
    );
    for (b, url) in &registries {
        within(
            &format!("{b} no longer lists it"),
            Duration::from_secs(15),
            || discover_json(url, SERVICE, &[]).is_empty(),
        );
    }
}
