//! A real Consul 1.8 cluster on loopback: three servers (`-server -bootstrap-expect 3`) and one
//! client agent joined to them, the agent chi talks to (Consul's recommended layout: services
//! register on their local agent, which forwards reads to the servers over RPC).
//!
//! Every agent listens on 127.0.0.1 on free ports of its own (HTTP, Serf LAN/WAN, server RPC;
//! DNS and gRPC off) and keeps its state in its own data directory, so a server killed with
//! SIGKILL restarts with its raft log, as a real one would.
//!
//! Tuned for tests, as the etcd harness is:
//! - `raft_multiplier = 1` (Consul's production setting; the default of 5 is for small VMs): a
//!   killed leader is replaced in one to two seconds;
//! - `rpc_hold_timeout = "1s"` (default 7 s): how long an agent holds a request while there is no
//!   leader before answering `500 No cluster leader`. The default would hide most elections from
//!   clients; the short hold makes the 500 answers reach chi, which is what the tests are about;
//! - LAN gossip probes every 500 ms (default 1 s) with a suspicion multiplier of 3 (default 4),
//!   so the client agent stops sending RPCs to a dead server within a few seconds.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Proc, binary, eventually, free_ports, wait_for_port};

/// One agent of the cluster.
pub struct Node {
    /// Node name (`s0`, `s1`, `s2`, `client`).
    pub name: String,
    /// HTTP API port on 127.0.0.1.
    pub http_port: u16,
    /// Serf LAN port (what agents join).
    pub serf_lan_port: u16,
    /// Server RPC port (what `/v1/status/leader` names).
    pub server_port: u16,
    /// The process.
    pub proc: Proc,
}

impl Node {
    /// `127.0.0.1:HTTP_PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
}

/// Three servers and a client agent; every process is killed (and the data removed) on drop.
pub struct ConsulCluster {
    /// The servers.
    pub servers: Vec<Node>,
    /// The client agent (not a server), joined to the servers.
    pub client: Node,
    // Dropped after the nodes (fields drop in order), so no agent outlives its directory.
    _dir: tempfile::TempDir,
}

const TUNING: &str = r#"performance { raft_multiplier = 1, rpc_hold_timeout = "1s" }
gossip_lan { probe_interval = "500ms", probe_timeout = "250ms", suspicion_mult = 3 }
disable_update_check = true"#;

fn spawn(dir: &Path, name: &str, server: bool, ports: &[u16], join: &[u16]) -> Node {
    let mut args: Vec<String> = vec!["agent".into()];
    if server {
        args.extend(["-server", "-bootstrap-expect", "3"].map(String::from));
    }
    let data = dir.join(name);
    args.extend([
        "-node".into(),
        name.into(),
        "-data-dir".into(),
        data.display().to_string(),
        "-bind".into(),
        "127.0.0.1".into(),
        "-client".into(),
        "127.0.0.1".into(),
        "-dns-port".into(),
        "-1".into(),
        "-grpc-port".into(),
        "-1".into(),
        "-retry-interval".into(),
        "1s".into(),
        "-hcl".into(),
        TUNING.into(),
    ]);
    for (flag, port) in [
        "-http-port",
        "-serf-lan-port",
        "-serf-wan-port",
        "-server-port",
    ]
    .iter()
    .zip(ports)
    {
        args.push(flag.to_string());
        args.push(port.to_string());
    }
    for port in join {
        args.push("-retry-join".into());
        args.push(format!("127.0.0.1:{port}"));
    }
    let proc = Proc::spawn(
        &format!("consul-{name}"),
        &binary("consul"),
        &args,
        dir.join(format!("{name}.log")),
    );
    Node {
        name: name.into(),
        http_port: ports[0],
        serf_lan_port: ports[1],
        server_port: ports[3],
        proc,
    }
}

impl ConsulCluster {
    /// Starts the three servers and the client agent; returns once a leader is elected and all
    /// four nodes are in the catalog.
    pub async fn start() -> ConsulCluster {
        let dir = tempfile::Builder::new()
            .prefix("chi-consul-cluster-")
            .tempdir()
            .expect("temp dir");
        let ports = free_ports(16);
        let lan: Vec<u16> = (0..3).map(|i| ports[4 * i + 1]).collect();
        let servers: Vec<Node> = (0..3)
            .map(|i| {
                spawn(
                    dir.path(),
                    &format!("s{i}"),
                    true,
                    &ports[4 * i..4 * i + 4],
                    &lan,
                )
            })
            .collect();
        let client = spawn(dir.path(), "client", false, &ports[12..16], &lan);
        let cluster = ConsulCluster {
            servers,
            client,
            _dir: dir,
        };
        cluster.wait_ready(Duration::from_secs(40)).await;
        cluster
    }

    /// `127.0.0.1:PORT` of the client agent's HTTP API: where chi is pointed.
    pub fn addr(&self) -> String {
        self.client.addr()
    }

    /// Every agent's log, for assertion messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .chain(std::iter::once(&self.client))
            .map(|n| format!("--- {}\n{}", n.name, n.proc.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Index of the leader, as the first live server that knows one says.
    pub async fn leader(&self) -> Option<usize> {
        let http = reqwest::Client::new();
        for s in &self.servers {
            let Ok(resp) = http
                .get(format!("http://{}/v1/status/leader", s.addr()))
                .timeout(Duration::from_millis(500))
                .send()
                .await
            else {
                continue;
            };
            let text = resp.text().await.unwrap_or_default();
            let leader = text.trim().trim_matches('"');
            if let Some(i) = self
                .servers
                .iter()
                .position(|x| leader == format!("127.0.0.1:{}", x.server_port))
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until some server is the leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader().await {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no consul leader within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL of server `i`: no leave, no goodbye to the peers.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].proc.kill();
    }

    /// Starts server `i` again with the same command line (same data directory and ports) and
    /// waits for its HTTP port.
    pub fn restart(&mut self, i: usize) {
        let s = &mut self.servers[i];
        s.proc.start();
        assert!(
            wait_for_port(s.http_port, Duration::from_secs(15)),
            "consul {} did not come back:\n{}",
            s.name,
            s.proc.log()
        );
    }

    /// A leader, the client agent answering through it, and all four nodes in the catalog.
    async fn wait_ready(&self, timeout: Duration) {
        let http = reqwest::Client::new();
        let url = format!("http://{}/v1/catalog/nodes", self.addr());
        let names: Vec<String> = self
            .servers
            .iter()
            .chain(std::iter::once(&self.client))
            .map(|n| format!("\"Node\":\"{}\"", n.name))
            .collect();
        let ready = eventually(timeout, || {
            let (http, url, names) = (http.clone(), url.clone(), names.clone());
            async move {
                let Ok(resp) = http.get(&url).timeout(Duration::from_secs(1)).send().await else {
                    return false;
                };
                if !resp.status().is_success() {
                    return false;
                }
                let text = resp.text().await.unwrap_or_default();
                names.iter().all(|n| text.contains(n.as_str()))
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "consul cluster not ready within {timeout:?}:\n{}",
            self.logs()
        );
        self.wait_for_leader(timeout).await;
    }
}
