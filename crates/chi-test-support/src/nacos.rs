//! A per-test rnacos server on loopback, with its own data directory.
//!
//! nacos-sdk finds the gRPC port at the HTTP port + 1000, so the HTTP port is picked such that
//! that port is free too. Instance expiry is short (health 2 s, instance 4 s) so tests of dead
//! registrants finish quickly.
//!
//! [`NacosCluster`] is three rnacos nodes in one raft cluster, for the tests of a dying node.

use std::net::TcpListener;
use std::time::Duration;

use crate::{Proc, binary, wait_for_port};

mod cluster;
pub use cluster::{NacosCluster, NacosNode, connected_ports};

/// rnacos' instance expiry in these tests (`RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND`).
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(4);

/// A running rnacos; killed (and its data directory removed) on drop.
pub struct NacosServer {
    /// HTTP port on 127.0.0.1 (the gRPC port is this + 1000).
    pub http_port: u16,
    /// The process.
    pub proc: Proc,
    /// The admin user and password, when auth is on.
    pub auth: Option<(String, String)>,
    dir: tempfile::TempDir,
}

/// An HTTP port whose +1000 (gRPC) neighbour is free as well, and a console port; the
/// listeners are held until the server is about to start, so parallel tests cannot pick them.
fn reserve_ports() -> (u16, u16, Vec<TcpListener>) {
    for _ in 0..200 {
        let http = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = http.local_addr().expect("addr").port();
        if p > 64000 {
            continue;
        }
        if let Ok(grpc) = TcpListener::bind(("127.0.0.1", p + 1000)) {
            let console = TcpListener::bind("127.0.0.1:0").expect("bind");
            let c = console.local_addr().expect("addr").port();
            return (p, c, vec![http, grpc, console]);
        }
    }
    panic!("no free port pair (p, p+1000) on loopback");
}

/// Starts of rnacos tried before a test fails (see [`NacosServer::launch`]).
const STARTS: usize = 6;

impl NacosServer {
    /// A server without auth.
    pub fn start() -> NacosServer {
        Self::launch(None, &[])
    }

    /// A server with open-API auth on and this admin user; `extra` adds environment lines
    /// (`RNACOS_API_LOGIN_TIMEOUT`...).
    pub fn start_with_auth(user: &str, password: &str, extra: &[(&str, &str)]) -> NacosServer {
        Self::launch(Some((user.to_owned(), password.to_owned())), extra)
    }

    /// rnacos 0.8.8 has a start-up race: a raft apply can arrive before its log manager is set,
    /// and the apply thread panics (`raftapply.rs: unwrap on None`), leaving a server that never
    /// creates its admin user. That is the server's bug, not chi's: start it again, fresh. On a
    /// loaded machine the race is lost more often (three times running was seen), so up to six
    /// starts.
    fn launch(auth: Option<(String, String)>, extra: &[(&str, &str)]) -> NacosServer {
        let mut last_log = String::new();
        for _ in 0..STARTS {
            let server = Self::launch_once(auth.clone(), extra);
            std::thread::sleep(Duration::from_millis(500));
            let log = server.proc.log();
            if !log.contains("panicked") {
                return server;
            }
            eprintln!("rnacos panicked while starting (its own start-up race); starting it again");
            last_log = log;
        }
        panic!("rnacos failed to start {STARTS} times:\n{last_log}");
    }

    fn launch_once(auth: Option<(String, String)>, extra: &[(&str, &str)]) -> NacosServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (http_port, console, held) = reserve_ports();
        let mut env = format!(
            "RNACOS_HTTP_PORT={http_port}\nRNACOS_GRPC_PORT={}\nRNACOS_HTTP_CONSOLE_PORT={console}\n\
             RNACOS_CONFIG_DB_DIR={}\nRNACOS_NAMING_HEALTH_TIMEOUT_SECOND=2\n\
             RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND={}\nRNACOS_ENABLE_METRICS=false\n",
            http_port + 1000,
            dir.path().join("db").display(),
            INSTANCE_TIMEOUT.as_secs(),
        );
        if let Some((u, p)) = &auth {
            env.push_str(&format!(
                "RNACOS_ENABLE_OPEN_API_AUTH=true\nRNACOS_INIT_ADMIN_USERNAME={u}\n\
                 RNACOS_INIT_ADMIN_PASSWORD={p}\n"
            ));
        }
        for (k, v) in extra {
            env.push_str(&format!("{k}={v}\n"));
        }
        let env_file = dir.path().join("env");
        std::fs::write(&env_file, env).expect("write env");
        drop(held);
        let proc = Proc::spawn(
            "rnacos",
            &binary("rnacos"),
            &["-e".to_owned(), env_file.display().to_string()],
            dir.path().join("log"),
        );
        let server = NacosServer {
            http_port,
            proc,
            auth,
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let ok = wait_for_port(self.http_port, Duration::from_secs(20))
            && wait_for_port(self.http_port + 1000, Duration::from_secs(20));
        assert!(ok, "rnacos did not start:\n{}", self.proc.log());
    }

    /// `127.0.0.1:HTTP_PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// A client config with short timings (and the admin credentials when auth is on).
    #[cfg(feature = "nacos")]
    pub fn config(&self) -> chi_discovery::registry::nacos::NacosConfig {
        use chi_discovery::Secret;
        use chi_discovery::registry::nacos::{NacosConfig, NacosServerConfig};
        NacosConfig {
            server_configs: vec![NacosServerConfig::new("127.0.0.1", self.http_port)],
            username: self.auth.as_ref().map(|(u, _)| u.clone()),
            password: self.auth.as_ref().map(|(_, p)| Secret::new(p.clone())),
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_millis(500),
            watch_check_interval: Duration::from_millis(500),
            empty_grace: Duration::from_secs(2),
            ..NacosConfig::default()
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Deletes its data directory (kill it first): it restarts as a brand-new server.
    pub fn wipe(&mut self) {
        assert!(!self.proc.is_running(), "wipe a killed server only");
        let db = self.dir.path().join("db");
        if db.exists() {
            std::fs::remove_dir_all(&db).expect("remove the data dir");
        }
    }

    /// Starts again on the same ports and data directory.
    pub fn restart(&mut self) {
        for _ in 0..3 {
            let before = self.proc.log().matches("panicked").count();
            self.proc.start();
            self.wait_ready();
            std::thread::sleep(Duration::from_millis(300));
            if self.proc.log().matches("panicked").count() == before {
                return;
            }
            eprintln!(
                "rnacos panicked while restarting (its own start-up race); restarting it again"
            );
            self.proc.kill();
        }
        panic!("rnacos failed to restart three times:\n{}", self.proc.log());
    }
}
