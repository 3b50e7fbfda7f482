//! The CLI against real etcd, Consul, rnacos and ZooKeeper on loopback: agent, discover, watch,
//! select, deregistration.
//!
//! The servers are `chi_test_support`'s: binaries from `CHI_ETCD_BIN` /
//! `CHI_CONSUL_BIN` / `CHI_NACOS_BIN`, else `${CHI_CACHE:-$HOME/.cache/chi}/bin`
//! (`scripts/registry install` puts them there). A missing binary fails the test with that hint.

use serde_json::Value;

use crate::support::{Agent, Proc, chi, discover_json, eventually, registration};

/// A registry server of `chi_test_support`, killed on drop, and the `--registry` URL of it.
pub(crate) struct Server {
    server: Box<dyn std::any::Any>,
    pub(crate) url: String,
}

impl Server {
    /// Kill -9: the registry vanishes without a goodbye to its clients.
    pub(crate) fn kill(&mut self) {
        use chi_test_support::{
            consul::ConsulAgent, etcd::Etcd, nacos::NacosServer, zookeeper::ZkServer,
        };
        if let Some(s) = self.server.downcast_mut::<ConsulAgent>() {
            s.kill();
        } else if let Some(s) = self.server.downcast_mut::<ZkServer>() {
            s.kill();
        } else if let Some(s) = self.server.downcast_mut::<Etcd>() {
            s.members.iter_mut().for_each(|m| m.kill());
        } else if let Some(s) = self.server.downcast_mut::<NacosServer>() {
            s.kill();
        } else {
            panic!("kill: not a registry server of chi_test_support");
        }
    }

    /// Starts it again on the same ports (and data directory: etcd and rnacos keep their data, a
    /// Consul dev agent comes back empty) and waits until it serves.
    pub(crate) fn restart(&mut self) {
        use chi_test_support::{
            consul::ConsulAgent, etcd::Etcd, nacos::NacosServer, zookeeper::ZkServer,
        };
        if let Some(s) = self.server.downcast_mut::<ConsulAgent>() {
            block_on(s.restart());
        } else if let Some(s) = self.server.downcast_mut::<ZkServer>() {
            s.restart();
        } else if let Some(s) = self.server.downcast_mut::<Etcd>() {
            s.members.iter_mut().for_each(|m| m.restart());
        } else if let Some(s) = self.server.downcast_mut::<NacosServer>() {
            s.restart();
        } else {
            panic!("restart: not a registry server of chi_test_support");
        }
    }
}

/// Runs a harness start-up (async) from these synchronous tests.
pub(crate) fn block_on<T>(start: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(start)
}

pub(crate) fn etcd() -> Server {
    let server = block_on(chi_test_support::etcd::Etcd::single());
    Server {
        url: format!("etcd://{}", server.endpoint()),
        server: Box::new(server),
    }
}

/// A dev agent, ready (leader elected, node in the catalog).
pub(crate) fn consul() -> Server {
    let server = block_on(chi_test_support::consul::ConsulAgent::start());
    Server {
        url: format!("consul://{}", server.addr()),
        server: Box::new(server),
    }
}

pub(crate) fn nacos() -> Server {
    let server = chi_test_support::nacos::NacosServer::start();
    Server {
        url: format!("nacos://{}", server.addr()),
        server: Box::new(server),
    }
}

/// A ZooKeeper 3.8 server; `layout` picks the URL's layout (`curator` or `dubbo`).
pub(crate) fn zookeeper(layout: &str) -> Server {
    let server = block_on(chi_test_support::zookeeper::ZkServer::start());
    Server {
        url: format!("zookeeper://{}?layout={layout}", server.addr()),
        server: Box::new(server),
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

#[test]
fn cli_against_real_zookeeper_in_both_layouts() {
    for layout in ["curator", "dubbo"] {
        let server = zookeeper(layout);
        scenario(&server.url);
        // `select` reads the same registry.
        let mut a = Agent::start(
            &registration("cli-real", 19203, "v1", ""),
            &["--registry", &server.url],
        );
        eventually("the instance listed", || {
            discover_json(&server.url, "cli-real", &[]).len() == 1
        });
        let out = chi()
            .args([
                "select",
                "cli-real",
                "--count",
                "3",
                "-o",
                "json",
                "--registry",
                &server.url,
            ])
            .output()
            .expect("run chi select");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && shown.contains("19203"),
            "{layout}: {shown}"
        );
        let (ok, _) = a.proc.terminate();
        assert!(ok, "{:?}", a.proc.seen);
    }
}
