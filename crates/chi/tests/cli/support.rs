//! Running the binary: agents in the background, one-shot commands, tiny servers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// The binary under test.
pub(crate) fn chi() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chi"));
    cmd.env_remove("CHI_REGISTRY")
        .env_remove("CHI_CONFIG")
        .env_remove("CHI_LOG");
    cmd
}

/// Runs `chi args...` to the end.
pub(crate) fn run(args: &[&str]) -> Output {
    chi().args(args).output().expect("run chi")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `text` to a temporary YAML file (kept until the returned guard drops).
pub(crate) fn yaml(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chi-config.yaml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

/// A registration config for `name` at 127.0.0.1:`port`, with extra lines under `registration`.
pub(crate) fn registration(name: &str, port: u16, version: &str, extra: &str) -> String {
    format!(
        "service_discovery:\n  registration:\n    name: \"{name}\"\n    version: \"{version}\"\n    address: \"127.0.0.1\"\n    port: {port}\n{extra}"
    )
}

/// A background process whose stdout lines arrive on a channel.
pub(crate) struct Proc {
    pub(crate) child: Child,
    lines: Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Proc {
    pub(crate) fn spawn(cmd: Command) -> Proc {
        Self::spawn_with_stderr(cmd, Stdio::inherit())
    }

    /// [`Proc::spawn`] with stderr sent to `stderr` (e.g. a file the test reads).
    pub(crate) fn spawn_with_stderr(mut cmd: Command, stderr: Stdio) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn chi");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line that satisfies `pred`, within 15 s.
    pub(crate) fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {what} in time; saw {:?}", self.seen),
            }
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the success flag and the rest of stdout.
    pub(crate) fn terminate(&mut self) -> (bool, Vec<String>) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let exit = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "chi did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(rest.iter().cloned());
        (exit.success(), rest)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `chi agent` and its admin address.
pub(crate) struct Agent {
    pub(crate) proc: Proc,
    pub(crate) admin: String,
    _config: (tempfile::TempDir, PathBuf),
}

impl Agent {
    /// Starts `chi agent -c <config> --admin 127.0.0.1:0 [extra...]` and waits until it serves.
    pub(crate) fn start(config: &str, extra: &[&str]) -> Agent {
        Agent::start_on("127.0.0.1:0", config, extra)
    }

    /// As [`Agent::start`], with the admin port on `admin`.
    pub(crate) fn start_on(admin: &str, config: &str, extra: &[&str]) -> Agent {
        let file = yaml(config);
        let mut cmd = chi();
        cmd.arg("agent")
            .arg("-c")
            .arg(&file.1)
            .args(["--admin", admin])
            .args(extra);
        let mut proc = Proc::spawn(cmd);
        let line = proc.wait_line("the admin address", |l| l.contains("admin on http://"));
        let admin = line
            .rsplit("http://")
            .next()
            .expect("address")
            .trim()
            .to_owned();
        Agent {
            proc,
            admin,
            _config: file,
        }
    }

    /// `chi://host:port` of this agent.
    pub(crate) fn url(&self) -> String {
        format!("chi://{}", self.admin)
    }
}

/// The sorted `id`s of a JSON instance list.
pub(crate) fn ids(list: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    v.sort();
    v
}

/// `chi discover NAME -o json --registry URL [extra...]`, parsed.
pub(crate) fn discover_json(registry: &str, name: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["discover", name, "-o", "json", "--registry", registry];
    args.extend_from_slice(extra);
    let out = run(&args);
    assert!(out.status.success(), "discover failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("discover -o json prints a JSON array")
}

/// Polls `f` until it returns true, for up to 15 s.
pub(crate) fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP server on a thread answering every request with `status`. Returns its port.
pub(crate) fn http_server(status: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
            });
        }
    });
    port
}

/// A free port on loopback (nobody listens on it once this returns).
pub(crate) fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `GET` on the admin port; the status and body.
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
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
