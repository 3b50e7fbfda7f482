//! An rnacos cluster of three on loopback: rnacos' raft cluster mode (`RNACOS_RAFT_NODE_ID`,
//! `RNACOS_RAFT_NODE_ADDR` = the node's gRPC address, node 1 with `RNACOS_RAFT_AUTO_INIT`, the
//! others with `RNACOS_RAFT_JOIN_ADDR` pointing at node 1), each node on its own ports and data
//! directory.
//!
//! Raft holds rnacos' persistent data (config, users); ephemeral instances, the ones chi
//! registers, are kept by the node their client is connected to and copied to the others
//! (Nacos' Distro idea). A node that stops answering its peers for 15 s is declared dead and the
//! instances of its clients are dropped by the others, unless those clients reconnected
//! elsewhere and registered again, which is what nacos-sdk does after losing its server.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{INSTANCE_TIMEOUT, STARTS, reserve_ports};
use crate::{Proc, binary, wait_for_port};

/// One rnacos node.
pub struct NacosNode {
    /// Raft node id (1, 2, 3).
    pub id: u64,
    /// HTTP port on 127.0.0.1 (gRPC on this + 1000).
    pub http_port: u16,
    /// The process.
    pub proc: Proc,
}

impl NacosNode {
    /// The gRPC port (HTTP + 1000, as nacos-sdk expects).
    pub fn grpc_port(&self) -> u16 {
        self.http_port + 1000
    }

    /// `127.0.0.1:HTTP_PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }
}

/// Three rnacos nodes in one raft cluster; killed (and their data removed) on drop.
pub struct NacosCluster {
    /// The nodes, node 1 first.
    pub nodes: Vec<NacosNode>,
    // Dropped after the nodes, so no process outlives its directory.
    _dir: tempfile::TempDir,
}

impl NacosCluster {
    /// Starts three nodes and waits until the raft group has three members and a leader. rnacos'
    /// start-up race (see [`NacosServer`](super::NacosServer)) hits node 1, which initialises the
    /// group, often (three times running is common on a loaded machine): a cluster with a node
    /// that panicked is started again, fresh. Node 1 panics within a second, before the others
    /// start, so a new start costs little; up to twice as many as a single server gets.
    pub async fn start() -> NacosCluster {
        let mut last = String::new();
        for _ in 0..2 * STARTS {
            let cluster = Self::launch().await;
            let formed = cluster.wait_formed(Duration::from_secs(30)).await;
            let panicked = cluster.panicked();
            if formed && !panicked {
                return cluster;
            }
            eprintln!(
                "rnacos cluster did not form (formed: {formed}, a node panicked: {panicked}); \
                 starting it again"
            );
            last = cluster.logs();
        }
        panic!(
            "rnacos cluster failed to start {} times:\n{last}",
            2 * STARTS
        );
    }

    async fn launch() -> NacosCluster {
        let dir = tempfile::Builder::new()
            .prefix("chi-rnacos-cluster-")
            .tempdir()
            .expect("temp dir");
        let reserved: Vec<(u16, u16, Vec<std::net::TcpListener>)> =
            (0..3).map(|_| reserve_ports()).collect();
        let first_grpc = reserved[0].0 + 1000;
        let mut held = Vec::new();
        let mut plan = Vec::new();
        for (i, (http, console, listeners)) in reserved.into_iter().enumerate() {
            let id = i as u64 + 1;
            let data = dir.path().join(format!("n{id}"));
            std::fs::create_dir_all(&data).expect("node dir");
            let mut env = format!(
                "RNACOS_HTTP_PORT={http}\nRNACOS_GRPC_PORT={}\nRNACOS_HTTP_CONSOLE_PORT={console}\n\
                 RNACOS_CONFIG_DB_DIR={}\nRNACOS_NAMING_HEALTH_TIMEOUT_SECOND=2\n\
                 RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND={}\nRNACOS_ENABLE_METRICS=false\n\
                 RNACOS_RAFT_NODE_ID={id}\nRNACOS_RAFT_NODE_ADDR=127.0.0.1:{}\n",
                http + 1000,
                data.join("db").display(),
                INSTANCE_TIMEOUT.as_secs(),
                http + 1000,
            );
            if id == 1 {
                env.push_str("RNACOS_RAFT_AUTO_INIT=true\n");
            } else {
                env.push_str(&format!("RNACOS_RAFT_JOIN_ADDR=127.0.0.1:{first_grpc}\n"));
            }
            let env_file = data.join("env");
            std::fs::write(&env_file, env).expect("write env");
            held.extend(listeners);
            plan.push((id, http, env_file, data));
        }
        drop(held);
        let mut cluster = NacosCluster {
            nodes: Vec::new(),
            _dir: dir,
        };
        for (id, http_port, env_file, data) in plan {
            let proc = Proc::spawn(
                &format!("rnacos-{id}"),
                &binary("rnacos"),
                &["-e".to_owned(), env_file.display().to_string()],
                data.join("log"),
            );
            let node = NacosNode {
                id,
                http_port,
                proc,
            };
            cluster.nodes.push(node);
            // A node asks node 1 to let it join once, half a second after it starts, and never
            // again; node 1 takes one membership change at a time. So: node 1 first, leading its
            // own group; then each other node in turn, started again (its data directory still
            // empty, so it asks again) until node 1 lists it as a member.
            for attempt in 0..4 {
                let n = cluster.nodes.len() - 1;
                if attempt > 0 {
                    cluster.nodes[n].proc.kill();
                    cluster.nodes[n].proc.start();
                }
                let node = &cluster.nodes[n];
                let up = tokio::task::block_in_place(|| {
                    wait_for_port(node.http_port, Duration::from_secs(20))
                        && wait_for_port(node.grpc_port(), Duration::from_secs(20))
                });
                assert!(up, "rnacos node {id} did not start:\n{}", node.proc.log());
                if cluster.wait_member(id, Duration::from_secs(5)).await || cluster.panicked() {
                    break;
                }
            }
        }
        cluster
    }

    /// Every node's log, for assertion messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {}\n{}", n.id, n.proc.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// rnacos' raft metrics of node `i` (`/nacos/v1/raft/metrics`), as text.
    async fn metrics(&self, i: usize) -> Option<String> {
        let url = format!("http://{}/nacos/v1/raft/metrics", self.nodes[i].addr());
        let resp = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        resp.text().await.ok()
    }

    /// Index of the raft leader, as the first live node that knows one says.
    pub async fn raft_leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            let Some(m) = self.metrics(i).await else {
                continue;
            };
            let Some(rest) = m.split("\"current_leader\":").nth(1) else {
                continue;
            };
            let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(id) = id.parse::<u64>() {
                return self.nodes.iter().position(|n| n.id == id);
            }
        }
        None
    }

    /// Waits until node 1 leads a group that has node `id` as a member.
    async fn wait_member(&self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.panicked() {
            if let Some(m) = self.metrics(0).await
                && m.contains("\"current_leader\":1")
                && members(&m).contains(&id)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// True when a node lost rnacos' start-up race.
    fn panicked(&self) -> bool {
        self.nodes.iter().any(|n| n.proc.log().contains("panicked"))
    }

    /// True once every node reports three raft members and a leader; false at the deadline or
    /// as soon as a node panicked.
    async fn wait_formed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.panicked() {
            let mut formed = 0;
            for i in 0..self.nodes.len() {
                if let Some(m) = self.metrics(i).await
                    && m.contains("\"current_leader\":")
                    && !m.contains("\"current_leader\":null")
                    && members(&m).len() == 3
                {
                    formed += 1;
                }
            }
            if formed == self.nodes.len() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// SIGKILL of node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].proc.kill();
    }

    /// The nodes this process holds an established TCP connection to, on their gRPC port: the
    /// ones an in-process Nacos client talks to. (Read from `/proc/self`: the sockets of this
    /// process, matched by inode with the kernel's TCP table.)
    pub fn serving(&self) -> Vec<usize> {
        let ports = connected_ports();
        (0..self.nodes.len())
            .filter(|i| ports.contains(&self.nodes[*i].grpc_port()))
            .collect()
    }

    /// How many of this process's connections each node's gRPC port has, node 1 first.
    pub fn connections(&self) -> Vec<usize> {
        let ports = connected_ports();
        self.nodes
            .iter()
            .map(|n| ports.iter().filter(|p| **p == n.grpc_port()).count())
            .collect()
    }

    /// The instance list of `service` (default group and namespace) as node `i` itself has it,
    /// through the Nacos open API: the JSON body (`{"hosts":[...], ...}`), or why there is none.
    pub async fn list_on(&self, i: usize, service: &str) -> Result<String, String> {
        let url = format!("http://{}/nacos/v1/ns/instance/list", self.nodes[i].addr());
        let resp = reqwest::Client::new()
            .get(url)
            .query(&[
                ("serviceName", service),
                ("groupName", "DEFAULT_GROUP"),
                ("namespaceId", "public"),
                ("healthyOnly", "false"),
            ])
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!(
                "node {} answered {}",
                self.nodes[i].id,
                resp.status()
            ));
        }
        resp.text().await.map_err(|e| e.to_string())
    }

    /// A client config naming every node, with the short timings of
    /// [`NacosServer::config`](super::NacosServer::config).
    #[cfg(feature = "nacos")]
    pub fn config(&self) -> chi_discovery::registry::nacos::NacosConfig {
        use chi_discovery::registry::nacos::{NacosConfig, NacosServerConfig};
        NacosConfig {
            server_configs: self
                .nodes
                .iter()
                .map(|n| NacosServerConfig::new("127.0.0.1", n.http_port))
                .collect(),
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_millis(500),
            watch_check_interval: Duration::from_millis(500),
            empty_grace: Duration::from_secs(2),
            ..NacosConfig::default()
        }
    }
}

/// The member ids in rnacos' raft metrics (`"membership_config":{"members":[3,2,1],...}`).
fn members(metrics: &str) -> Vec<u64> {
    metrics
        .split("\"members\":[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .map(|ms| {
            ms.split(',')
                .filter_map(|x| x.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The remote port of each established TCP connection of this process (a port once per
/// connection).
pub fn connected_ports() -> Vec<u16> {
    let mut inodes = HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for entry in dir.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let target = target.to_string_lossy();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            if let Some(port) = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}
