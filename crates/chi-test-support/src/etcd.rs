//! Real etcd 3.4 on loopback: a single node or a three-member cluster, each member in its own
//! temporary data directory on free ports, with kill -9 / restart (same data directory, same
//! ports) and auth setup through etcd-client (etcdctl is not installed).
//!
//! Elections are tuned faster than etcd's defaults (heartbeat 50 ms, election 500 ms) so a
//! killed leader is replaced in about a second and the fault tests stay short.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tempfile::TempDir;

use crate::{Proc, binary, free_ports, wait_for_port};

/// One etcd member.
pub struct Member {
    /// Member name (`m0`, `m1`, ...).
    pub name: String,
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    /// Peer port on 127.0.0.1.
    pub peer_port: u16,
    /// The process.
    pub proc: Proc,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl Member {
    /// `127.0.0.1:PORT`, as chi's config takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// SIGKILL: no goodbye to the peers or the clients.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Deletes its data directory (kill it first): it restarts as a brand-new etcd that has lost
    /// every key and lease.
    pub fn wipe(&mut self) {
        assert!(!self.proc.is_running(), "wipe a killed member only");
        std::fs::remove_dir_all(&self.data_dir).expect("remove the data dir");
    }

    /// Starts it again with the same command line (same data directory and ports) and waits for
    /// the client port.
    pub fn restart(&mut self) {
        self.proc.start();
        assert!(
            wait_for_port(self.client_port, Duration::from_secs(10)),
            "etcd {} did not come back:\n{}",
            self.name,
            self.proc.log()
        );
    }
}

/// A running etcd cluster (one or three members). Members are killed and their data removed on
/// drop.
pub struct Etcd {
    /// The members.
    pub members: Vec<Member>,
    /// The TLS files when the members serve clients over TLS.
    pub certs: Option<Certs>,
    // Dropped after the members (fields drop in order), so no process outlives its directory.
    _dir: TempDir,
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate for user `root`,
/// made with the `openssl` command (Debian's `openssl` package).
#[derive(Debug, Clone)]
pub struct Certs {
    /// CA certificate (PEM).
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server: (PathBuf, PathBuf),
    /// Client certificate and key (CN `root`).
    pub client: (PathBuf, PathBuf),
}

impl Certs {
    /// Generates everything in `dir`.
    pub fn generate(dir: &Path) -> Certs {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=chi-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write ext");
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write ext");
        for (name, cn) in [("server", "127.0.0.1"), ("client", "root")] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={cn}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        }
        Certs {
            ca: dir.join("ca.crt"),
            server: (dir.join("server.crt"), dir.join("server.key")),
            client: (dir.join("client.crt"), dir.join("client.key")),
        }
    }

    /// etcd-client TLS options that trust the CA and present the client certificate.
    pub fn client_tls(&self) -> etcd_client::TlsOptions {
        let read = |p: &PathBuf| std::fs::read(p).expect("read cert");
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
            .identity(etcd_client::Identity::from_pem(
                read(&self.client.0),
                read(&self.client.1),
            ))
    }
}

impl Etcd {
    /// A single node.
    pub async fn single() -> Etcd {
        Self::start(1, false).await
    }

    /// A single node that serves clients over TLS only and requires a client certificate.
    pub async fn single_tls() -> Etcd {
        Self::start(1, true).await
    }

    /// Three members on loopback, with a leader elected.
    pub async fn cluster() -> Etcd {
        Self::start(3, false).await
    }

    async fn start(n: usize, tls: bool) -> Etcd {
        let bin = binary("etcd");
        let dir = tempfile::Builder::new()
            .prefix("chi-etcd-")
            .tempdir()
            .expect("temp dir");
        let certs = tls.then(|| Certs::generate(dir.path()));
        let ports = free_ports(2 * n);
        let initial: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let initial = initial.join(",");
        // One token for all members (members with different tokens form different clusters),
        // unique per cluster so that two test clusters never merge.
        let token = format!("chi-test-{}", ports[1]);
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let name = format!("m{i}");
                let (client_port, peer_port) = (ports[2 * i], ports[2 * i + 1]);
                let mut args =
                    member_args(dir.path(), &name, client_port, peer_port, &initial, &token);
                if let Some(c) = &certs {
                    for a in args.iter_mut() {
                        if *a == format!("http://127.0.0.1:{client_port}") {
                            *a = format!("https://127.0.0.1:{client_port}");
                        }
                    }
                    for (flag, path) in [
                        ("--cert-file", &c.server.0),
                        ("--key-file", &c.server.1),
                        ("--trusted-ca-file", &c.ca),
                    ] {
                        args.push(flag.into());
                        args.push(path.display().to_string());
                    }
                    args.push("--client-cert-auth".into());
                }
                let proc = Proc::spawn(
                    &format!("etcd-{name}"),
                    &bin,
                    &args,
                    dir.path().join(format!("{name}.log")),
                );
                Member {
                    data_dir: dir.path().join(&name),
                    name,
                    client_port,
                    peer_port,
                    proc,
                }
            })
            .collect();
        let etcd = Etcd {
            members,
            certs,
            _dir: dir,
        };
        for m in &etcd.members {
            assert!(
                wait_for_port(m.client_port, Duration::from_secs(15)),
                "etcd {} did not start:\n{}",
                m.name,
                m.proc.log()
            );
        }
        etcd.wait_for_leader(Duration::from_secs(15)).await;
        etcd
    }

    /// Every member's endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// The first member's endpoint (the only one of a single node).
    pub fn endpoint(&self) -> String {
        self.members[0].endpoint()
    }

    /// Options for a plain etcd-client (TLS when the members serve it).
    fn options(&self) -> ConnectOptions {
        let options = ConnectOptions::new().with_timeout(Duration::from_secs(2));
        match &self.certs {
            Some(c) => options.with_tls(c.client_tls()),
            None => options,
        }
    }

    /// A plain etcd-client connected to every member.
    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), Some(self.options()))
            .await
            .expect("etcd client")
    }

    /// Index of the member that is the leader now, asked of the running members.
    pub async fn leader(&self) -> Option<usize> {
        for m in &self.members {
            let Ok(Ok(mut c)) = tokio::time::timeout(
                Duration::from_secs(1),
                Client::connect([m.endpoint()], Some(self.options())),
            )
            .await
            else {
                continue;
            };
            let Ok(status) = c.status().await else {
                continue;
            };
            if status.leader() == 0 {
                continue;
            }
            let me = status.header().map(|h| h.member_id());
            if me == Some(status.leader()) {
                return self.members.iter().position(|x| x.name == m.name);
            }
        }
        None
    }

    /// Waits until some member is the leader (and answers as such).
    pub async fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader().await {
                return i;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no etcd leader within {timeout:?}:\n{}",
                self.members
                    .iter()
                    .map(|m| m.proc.log())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Turns auth on: user `root` with `password`, role `root`, `auth enable`.
    pub async fn enable_auth(&self, password: &str) {
        let mut c = self.client().await;
        c.user_add("root", password, None).await.expect("user add");
        // etcd 3.4 knows the `root` role without creating it; adding it anyway is harmless
        // where it does not.
        let _ = c.role_add("root").await;
        c.user_grant_role("root", "root").await.expect("grant root");
        c.auth_enable().await.expect("auth enable");
    }
}

fn member_args(
    dir: &Path,
    name: &str,
    client_port: u16,
    peer_port: u16,
    initial: &str,
    token: &str,
) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    [
        "--name",
        name,
        "--data-dir",
        &dir.join(name).display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        initial,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        token,
        "--heartbeat-interval",
        "50",
        "--election-timeout",
        "500",
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// A TCP forwarder in front of a member (the shared [`crate::proxy::Proxy`]).
pub use crate::proxy::Proxy;
