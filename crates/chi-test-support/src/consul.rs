//! A real Consul 1.8 dev agent on loopback, on free ports, for one test.
//!
//! `-dev` keeps everything in memory, so a restart is a fresh agent that has forgotten every
//! registration: exactly the "agent restarted" case the adapter must survive. DNS (but with
//! [`ConsulAgent::start_with_dns`]) and gRPC are off (`-1`); HTTP, Serf LAN/WAN and the server RPC
//! port are free ports, so tests run in parallel.
//!
//! [`ConsulCluster`] is three servers and a client agent, for the tests of leader loss.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Proc, binary, eventually, free_ports};

mod cluster;
pub use cluster::{ConsulCluster, Node};

/// A running dev agent.
pub struct ConsulAgent {
    /// The agent process.
    pub proc: Proc,
    /// HTTP API port on 127.0.0.1.
    pub http_port: u16,
    /// The HTTPS port when TLS is on.
    pub https_port: Option<u16>,
    /// The master token when ACLs are on.
    pub master_token: Option<String>,
    /// The DNS interface's port (UDP and TCP) when it is on.
    pub dns_port: Option<u16>,
    dir: tempfile::TempDir,
}

/// What kind of agent to start.
enum Flavor {
    Plain,
    Acl(String),
    Tls,
    Dns,
}

impl ConsulAgent {
    /// A dev agent without ACLs, ready (leader elected, node in the catalog).
    pub async fn start() -> ConsulAgent {
        Self::spawn(Flavor::Plain).await
    }

    /// A dev agent with ACLs on and `default_policy = "deny"`; `master` is the master token
    /// (also the agent's own token, so its anti-entropy sync is allowed).
    pub async fn start_with_acl(master: &str) -> ConsulAgent {
        Self::spawn(Flavor::Acl(master.to_owned())).await
    }

    /// A dev agent that also serves HTTPS on [`ConsulAgent::https_port`] and requires a client
    /// certificate there (`verify_incoming_https`). The CA, server and client certificates are
    /// made with `consul tls` in [`ConsulAgent::tls_dir`]: `consul-agent-ca.pem`,
    /// `dc1-client-consul-0.pem` and `dc1-client-consul-0-key.pem`.
    pub async fn start_with_tls() -> ConsulAgent {
        Self::spawn(Flavor::Tls).await
    }

    /// A dev agent that also serves its DNS interface on [`ConsulAgent::dns_port`]
    /// (`_NAME._tcp.service.consul` SRV and `NAME.service.consul` A records of passing
    /// instances, TTL 0).
    pub async fn start_with_dns() -> ConsulAgent {
        Self::spawn(Flavor::Dns).await
    }

    /// Where the TLS files are.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    async fn spawn(flavor: Flavor) -> ConsulAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(6);
        let mut args: Vec<String> = [
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-dns-port",
            "-1",
            "-grpc-port",
            "-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, port) in [
            "-http-port",
            "-serf-lan-port",
            "-serf-wan-port",
            "-server-port",
        ]
        .iter()
        .zip(&ports)
        {
            args.push(flag.to_string());
            args.push(port.to_string());
        }
        let mut master_token = None;
        let mut https_port = None;
        let mut dns_port = None;
        match flavor {
            Flavor::Plain => {}
            Flavor::Dns => {
                if let Some(i) = args.iter().position(|a| a == "-dns-port") {
                    args[i + 1] = ports[5].to_string();
                }
                dns_port = Some(ports[5]);
            }
            Flavor::Acl(token) => {
                // Consul 1.8 syntax: `acl.tokens.master` (renamed `initial_management` in 1.11).
                args.push("-hcl".into());
                args.push(format!(
                    r#"acl {{ enabled = true, default_policy = "deny", tokens {{ master = "{token}", agent = "{token}" }} }}"#
                ));
                master_token = Some(token);
            }
            Flavor::Tls => {
                let tls = |args: &[&str]| {
                    let out = std::process::Command::new(binary("consul"))
                        .args(args)
                        .current_dir(dir.path())
                        .output()
                        .expect("run consul tls");
                    assert!(out.status.success(), "consul {args:?}: {out:?}");
                };
                tls(&["tls", "ca", "create"]);
                tls(&["tls", "cert", "create", "-server", "-dc", "dc1"]);
                tls(&["tls", "cert", "create", "-client", "-dc", "dc1"]);
                let d = dir.path().display();
                args.push("-hcl".into());
                args.push(format!(
                    r#"ports {{ https = {} }} ca_file = "{d}/consul-agent-ca.pem" cert_file = "{d}/dc1-server-consul-0.pem" key_file = "{d}/dc1-server-consul-0-key.pem" verify_incoming_https = true"#,
                    ports[4]
                ));
                https_port = Some(ports[4]);
            }
        }
        let log: PathBuf = dir.path().join("consul.log");
        let proc = Proc::spawn("consul", &binary("consul"), &args, log);
        let agent = ConsulAgent {
            proc,
            http_port: ports[0],
            https_port,
            master_token,
            dns_port,
            dir,
        };
        agent.wait_ready().await;
        agent
    }

    /// `127.0.0.1:PORT` of the HTTP API.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Kill -9: the agent vanishes without deregistering anything.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again with the same command line (a fresh, empty dev agent) and waits until
    /// it is ready.
    pub async fn restart(&mut self) {
        self.proc.start();
        self.wait_ready().await;
    }

    /// Waits for a leader and for the agent's node in the catalog (before that, registrations
    /// are accepted by the agent but not yet visible to health queries).
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let url = self.url();
        let token = self.master_token.clone().unwrap_or_default();
        let ready = eventually(Duration::from_secs(30), || {
            let http = http.clone();
            let url = url.clone();
            let token = token.clone();
            async move {
                let get = |path: &str| {
                    let mut req = http
                        .get(format!("{url}{path}"))
                        .timeout(Duration::from_secs(1));
                    if !token.is_empty() {
                        req = req.header("X-Consul-Token", &token);
                    }
                    req.send()
                };
                let leader = match get("/v1/status/leader").await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => return false,
                };
                if leader.trim().len() <= 2 {
                    return false;
                }
                match get("/v1/catalog/nodes").await {
                    Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"Node\"")),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(
            ready.is_some(),
            "consul agent on {} not ready within 30 s; log:\n{}",
            self.addr(),
            self.proc.log()
        );
    }
}
