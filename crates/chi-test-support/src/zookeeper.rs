//! A real ZooKeeper server on loopback for one test, and `kazoo` (Python) as a foreign client.
//!
//! The server is Debian's `zookeeper` package (3.8) run in the foreground with the system's JRE,
//! without its init scripts: `java -cp JARS:/etc/zookeeper/conf
//! org.apache.zookeeper.server.ZooKeeperServerMain DIR/zoo.cfg`, on a free port with its own data
//! directory, ready when the four-letter word `ruok` answers `imok` and `srvr` a mode. `tickTime` is 100 ms and the
//! minimum session timeout 200 ms, so tests can expire sessions quickly. [`ZkServer::restart`]
//! starts it again on the same port and data, so sessions and nodes survive a restart as they do
//! in production.
//!
//! The jars come from `/usr/share/java` (`scripts/registry install zookeeper` installs the
//! package), or from `CHI_ZOOKEEPER_CLASSPATH`. A missing `java` or package is a test failure,
//! never a skip.
//!
//! [`Kazoo`] drives `kazoo` 2.11 (the Python client) in a child process, one JSON request per
//! line (`kazoo_peer.py` beside this crate's `Cargo.toml`): it writes and reads nodes as Curator /
//! Spring Cloud Zookeeper and Dubbo do, independently of chi's code. Its Python comes from
//! `scripts/kazoo python` (a virtualenv in `${CHI_CACHE:-$HOME/.cache/chi}/venv`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Proc, free_port};

/// A running ZooKeeper server.
pub struct ZkServer {
    /// The server process.
    pub proc: Proc,
    /// Client port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

/// The classpath of Debian's ZooKeeper: its jars and their dependencies, then its config
/// directory (log4j settings).
fn classpath() -> String {
    if let Ok(cp) = std::env::var("CHI_ZOOKEEPER_CLASSPATH") {
        return cp;
    }
    let java = Path::new("/usr/share/java");
    let wanted = |name: &str| {
        [
            "zookeeper.jar",
            "zookeeper-jute.jar",
            "slf4j-api.jar",
            "log4j-1.2.jar",
        ]
        .contains(&name)
            || (name.ends_with(".jar")
                && ["netty", "commons-", "metrics-core", "snappy"]
                    .iter()
                    .any(|p| name.starts_with(p)))
    };
    let mut jars: Vec<String> = std::fs::read_dir(java)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| wanted(n))
                .map(|n| java.join(n).display().to_string())
                .collect()
        })
        .unwrap_or_default();
    jars.sort();
    assert!(
        jars.iter().any(|j| j.ends_with("/zookeeper.jar")) && which("java"),
        "ZooKeeper not found (/usr/share/java/zookeeper.jar and java); run `scripts/registry \
         install zookeeper` (the README's test command does), or set CHI_ZOOKEEPER_CLASSPATH"
    );
    jars.push("/etc/zookeeper/conf".into());
    jars.join(":")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The answer of the server on `port` to the four-letter word `word` (empty when it is down).
pub fn four_letter(port: u16, word: &str) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(word.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// True when the server on `port` serves: `ruok` answers `imok` and `srvr` has a mode (`ruok`
/// alone answers while a starting server still refuses sessions).
pub fn ready(port: u16) -> bool {
    four_letter(port, "ruok") == "imok" && four_letter(port, "srvr").contains("Mode:")
}

impl ZkServer {
    /// A server on a free port, ready.
    pub async fn start() -> ZkServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=100\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 minSessionTimeout=200\nmaxSessionTimeout=60000\n\
                 4lw.commands.whitelist=ruok,srvr,cons\nadmin.enableServer=false\n",
                data.display()
            ),
        )
        .expect("write zoo.cfg");
        let args: Vec<String> = [
            "-Xmx192m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            "-cp",
            &classpath(),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            &cfg.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let proc = Proc::spawn(
            "zookeeper",
            Path::new("java"),
            &args,
            dir.path().join("zookeeper.log"),
        );
        let mut server = ZkServer { proc, port, dir };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if ready(self.port) {
                return;
            }
            assert!(
                self.proc.is_running(),
                "zookeeper exited at start:\n{}",
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("zookeeper not ready in 30 s:\n{}", self.proc.log());
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill -9: clients lose their connection; sessions and nodes stay in the data directory.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port and data directory and waits until it is ready.
    pub fn restart(&mut self) {
        self.proc.start();
        self.wait_ready();
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// `scripts/kazoo python`, once per test process.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = Command::new(root.join("scripts/kazoo"))
            .arg("python")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/kazoo");
        assert!(
            out.status.success(),
            "scripts/kazoo python failed (the ZooKeeper tests need kazoo from PyPI; CI={})",
            std::env::var("CI").unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// A kazoo client in a child process: a foreign ZooKeeper client with its own session.
pub struct Kazoo {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Kazoo {
    /// Connects to `hosts` (`127.0.0.1:2181[,...]`) with a session timeout of `timeout`.
    pub fn connect(hosts: &str, timeout: Duration) -> Kazoo {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kazoo_peer.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(hosts)
            .arg(timeout.as_secs_f64().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kazoo_peer.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut k = Kazoo {
            child,
            stdin,
            stdout,
        };
        k.call(json!({"op": "ping"}));
        k
    }

    /// Sends one request; its `ok` answer, or a panic with kazoo's error.
    pub fn call(&mut self, request: Value) -> Value {
        match self.try_call(request.clone()) {
            Ok(v) => v,
            Err(e) => panic!("kazoo {request}: {e}"),
        }
    }

    /// Sends one request; `Err("ExceptionName: message")` when kazoo raised.
    pub fn try_call(&mut self, request: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{request}").expect("write to kazoo");
        self.stdin.flush().expect("flush kazoo");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from kazoo");
        let answer: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("kazoo answered {line:?}: {e}"));
        match answer.get("ok") {
            Some(v) => Ok(v.clone()),
            None => Err(format!("{}: {}", answer["error"], answer["message"])),
        }
    }

    /// Registers an instance as Spring Cloud Zookeeper does (Curator's JSON, ephemeral).
    pub fn curator_register(
        &mut self,
        root: &str,
        name: &str,
        id: &str,
        port: u16,
        metadata: Value,
    ) {
        self.call(
            json!({"op": "curator_register", "root": root, "name": name, "id": id,
            "address": "127.0.0.1", "port": port, "metadata": metadata}),
        );
    }

    /// The instances of `name` as Curator reads them (`name`, `id`, `address`, `port`,
    /// `metadata`).
    pub fn curator_list(&mut self, root: &str, name: &str) -> Vec<Value> {
        let v = self.call(json!({"op": "curator_list", "root": root, "name": name}));
        v.as_array().cloned().unwrap_or_default()
    }

    /// Registers a Dubbo provider (`url`, ephemeral, its name URL-encoded as Java's
    /// `URLEncoder` does); answers the node's path.
    pub fn dubbo_register(&mut self, root: &str, interface: &str, url: &str) -> String {
        let v = self.call(
            json!({"op": "dubbo_register", "root": root, "interface": interface, "url": url}),
        );
        v.as_str().unwrap_or_default().to_owned()
    }

    /// The provider URLs of `interface`, decoded.
    pub fn dubbo_list(&mut self, root: &str, interface: &str) -> Vec<String> {
        let v = self.call(json!({"op": "dubbo_list", "root": root, "interface": interface}));
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Closes the session (its ephemeral nodes go at once) and ends the process.
    pub fn close(mut self) {
        let _ = self.try_call(json!({"op": "close"}));
    }
}

impl Drop for Kazoo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
