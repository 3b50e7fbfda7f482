//! The CLI against real etcd and Consul on loopback: agent, discover, watch, deregistration.
//!
//! Binaries as the library's harness finds them: `CHI_ETCD_BIN` / `CHI_CONSUL_BIN`, else
//! `${CHI_CACHE:-$HOME/.cache/chi}/bin` (`scripts/registry install` puts them there). A missing
//! binary fails the test with that hint.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{binary, free_ports, wait_for_port};
use crate::support::{Agent, Proc, chi, discover_json, eventually, http_get, registration};

fn wait_port(port: u16) {
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "port {port} did not open"
    );
}

/// A registry process, killed on drop.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = free_ports(2);
    let client = format!("http://127.0.0.1:{}", p[0]);
    let peer = format!("http://127.0.0.1:{}", p[1]);
    let child = Command::new(binary("etcd"))
        .args(["--name", "cli", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("cli={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    wait_port(p[0]);
    Server {
        child,
        url: format!("etcd://127.0.0.1:{}", p[0]),
        _dir: dir,
    }
}

fn consul() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = free_ports(4);
    let child = Command::new(binary("consul"))
        .args([
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
        ])
        .args(["-dns-port", "-1", "-grpc-port", "-1"])
        .args([
            "-http-port",
            &p[0].to_string(),
            "-serf-lan-port",
            &p[1].to_string(),
        ])
        .args([
            "-serf-wan-port",
            &p[2].to_string(),
            "-server-port",
            &p[3].to_string(),
        ])
        .arg("-data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start consul");
    wait_port(p[0]);
    let addr = format!("127.0.0.1:{}", p[0]);
    eventually("a consul leader", || {
        let (status, body) = http_get(&addr, "/v1/status/leader");
        status == 200 && body.contains("127.0.0.1")
    });
    Server {
        child,
        url: format!("consul://{addr}"),
        _dir: dir,
    }
}

fn nacos() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    // nacos-sdk finds the gRPC port at the HTTP port + 1000.
    let (http, held) = (0..200)
        .find_map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let p = l.local_addr().expect("addr").port();
            let g = (p <= 64000)
                .then(|| TcpListener::bind(("127.0.0.1", p + 1000)).ok())
                .flatten()?;
            Some((p, vec![l, g]))
        })
        .expect("a free port pair (p, p+1000)");
    let console = free_ports(1)[0];
    let env = format!(
        "RNACOS_HTTP_PORT={http}\nRNACOS_GRPC_PORT={}\nRNACOS_HTTP_CONSOLE_PORT={console}\n\
         RNACOS_CONFIG_DB_DIR={}\nRNACOS_ENABLE_METRICS=false\n",
        http + 1000,
        dir.path().join("db").display(),
    );
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, env).expect("write env");
    drop(held);
    let child = Command::new(binary("rnacos"))
        .arg("-e")
        .arg(&env_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rnacos");
    wait_port(http);
    wait_port(http + 1000);
    Server {
        child,
        url: format!("nacos://127.0.0.1:{http}"),
        _dir: dir,
    }
}

/// Register, discover, watch a second instance come and go, deregister on SIGTERM.
fn scenario(url: &str) {
    let ids = |list: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = list
            .iter()
            .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        v.sort();
        v
    };
    let mut a = Agent::start(
        &registration("cli-real", 19201, "v1", ""),
        &["--registry", url],
    );
    eventually("the first instance listed", || {
        ids(&discover_json(url, "cli-real", &[])) == ["cli-real-127.0.0.1-19201"]
    });

    let mut cmd = chi();
    cmd.args(["watch", "cli-real", "-o", "json", "--registry", url]);
    let mut watch = Proc::spawn(cmd);
    let reset: Value =
        serde_json::from_str(&watch.wait_line("reset", |l| l.contains("\"reset\""))).expect("json");
    assert_eq!(reset["instances"][0]["id"], "cli-real-127.0.0.1-19201");

    let mut b = Agent::start(
        &registration("cli-real", 19202, "v2", ""),
        &["--registry", url],
    );
    let added: Value = serde_json::from_str(&watch.wait_line("added b", |l| {
        l.contains("\"added\"") && l.contains("19202")
    }))
    .expect("json");
    assert_eq!(added["instance"]["version"], "v2");

    let (ok, _) = b.proc.terminate();
    assert!(ok, "{:?}", b.proc.seen);
    watch.wait_line("removed b", |l| {
        l.contains("\"removed\"") && l.contains("19202")
    });

    let (ok, _) = a.proc.terminate();
    assert!(ok, "{:?}", a.proc.seen);
    eventually("no instance left", || {
        discover_json(url, "cli-real", &[]).is_empty()
    });
}

#[test]
fn cli_against_real_etcd() {
    let server = etcd();
    scenario(&server.url);
}

#[test]
fn cli_against_real_consul() {
    let server = consul();
    scenario(&server.url);
}

#[test]
fn cli_against_real_nacos() {
    let server = nacos();
    scenario(&server.url);
}
