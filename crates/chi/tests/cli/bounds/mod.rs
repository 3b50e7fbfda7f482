//! Every door bounded: the limits of `chi agent`'s port, `chi proxy`'s listener and `chi xds`,
//! probed with real clients on loopback, bounded in count and time.
//!
//! - [`http`]: header, body and idle timeouts, streamed and timed-out uploads, the agent's body
//!   cap, connection and request limits (503 with `Retry-After`), and the proxy's answers to
//!   malformed and contradictory framing;
//! - [`input`]: durations, `--workers`, deep configs, oversized tags and terminal escapes in
//!   registry data;
//! - [`xds`]: bad ADS streams end with an error status, streams and connections over the limits
//!   are refused with `RESOURCE_EXHAUSTED`;
//! - [`flood`]: 2,000 connections against each server: refused beyond the limit, memory flat,
//!   the clients already there still served.
//!
//! The limits are set through their environment variables (`CHI_HEADER_TIMEOUT`, ...), which the
//! flags read too.

mod flood;
mod http;
mod input;
mod xds;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Proc, chi, registration, yaml};

/// A `chi` process started with `envs`, once its stdout printed a line containing `ready`; the
/// line.
pub(crate) fn start(mut cmd: Command, envs: &[(&str, &str)], ready: &str) -> (Proc, String) {
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn(cmd);
    let line = proc.wait_line(ready, |l| l.contains(ready));
    (proc, line)
}

/// The addresses after each `http://` of `line`.
fn urls(line: &str) -> Vec<String> {
    line.split("http://")
        .skip(1)
        .map(|s| {
            s.split(|c: char| c == ';' || c.is_whitespace())
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// A running `chi agent` holding the embedded registry, and its admin address.
pub(crate) struct Server {
    pub(crate) proc: Proc,
    /// Where clients connect (the agent's admin port, the proxy's listener, `chi xds`'s port).
    pub(crate) addr: String,
    /// The admin port (`/metrics`).
    pub(crate) admin: String,
    _config: (tempfile::TempDir, std::path::PathBuf),
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Resident memory of the server process, KiB (`/proc/PID/status`).
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server runs");
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// `chi://` of an agent.
    pub(crate) fn url(&self) -> String {
        format!("chi://{}", self.admin)
    }

    /// The value of the series `name{labels}` (labels as written in the scrape, e.g.
    /// `reason="connections",server="agent"`), 0 when absent.
    pub(crate) fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, body) = request(
            &self.admin,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| labels.split(',').all(|p| l.contains(p)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// `chi agent` registering `agent-self` (a name no test asks for), on the embedded registry.
pub(crate) fn agent(envs: &[(&str, &str)], extra: &[&str]) -> Server {
    let config = yaml(&registration("agent-self", 1, "v1", ""));
    let mut cmd = chi();
    cmd.arg("agent")
        .arg("-c")
        .arg(&config.1)
        .args(["--admin", "127.0.0.1:0"])
        .args(extra);
    let (proc, line) = start(cmd, envs, "admin on http://");
    let admin = urls(&line).pop().expect("admin address");
    Server {
        proc,
        addr: admin.clone(),
        admin,
        _config: config,
    }
}

/// `chi proxy` over `registry`.
pub(crate) fn proxy(registry: &str, envs: &[(&str, &str)], extra: &[&str]) -> Server {
    let config =
        yaml("service_discovery:\n  discovery:\n    cache:\n      refresh_interval: \"200ms\"\n");
    let mut cmd = chi();
    cmd.args(["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("-c")
        .arg(&config.1)
        .args(["--registry", registry, "--workers", "2"])
        .args(extra);
    let (proc, line) = start(cmd, envs, "listening on http://");
    let mut u = urls(&line).into_iter();
    let addr = u.next().expect("listen address");
    let admin = u.next().expect("admin address");
    Server {
        proc,
        addr,
        admin,
        _config: config,
    }
}

/// Registers `name`/`id` at 127.0.0.1:`port` in an agent's embedded registry through its API;
/// the status and body of the answer.
pub(crate) fn register(admin: &str, name: &str, id: &str, port: u16, extra: &str) -> (u16, String) {
    let json =
        format!(r#"{{"id":"{id}","name":"{name}","address":"127.0.0.1","port":{port}{extra}}}"#);
    request(
        admin,
        &format!(
            "PUT /v1/services/{name}/instances/{id} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
            json.len()
        ),
    )
}

/// Sends `raw` on a new connection and reads the answer to the end (at most 10 s); the status
/// (0 when the server closed without one) and the body.
pub(crate) fn request(addr: &str, raw: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(raw.as_bytes()).expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    parse(&String::from_utf8_lossy(&resp))
}

/// The status and body of a response `text` (0 when there is none).
pub(crate) fn parse(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// How long until the server closes `s` (reads until EOF or an error), at most `limit`; `None`
/// when it is still open then.
pub(crate) fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<(Duration, String)> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match s.read(&mut buf) {
            Ok(0) | Err(_) if start.elapsed() < limit => {
                return Some((start.elapsed(), String::from_utf8_lossy(&got).into_owned()));
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}
