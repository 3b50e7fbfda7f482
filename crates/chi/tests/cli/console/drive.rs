//! The console tests' tools: headless Chromium driven by `tests/console/drive.js`
//! ([`Browser`]), instances registered and kept alive through an agent's API ([`Fleet`]), and
//! where screenshots go.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::Proc;

pub(super) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where the screenshots go: the test's scratch directory, or the directory `CHI_SCREENSHOTS`
/// names (`CHI_SCREENSHOTS=docs/console` refreshes the ones the README shows), so a test run
/// leaves the checkout as it found it.
pub(super) fn shot(name: &str) -> String {
    let dir = match std::env::var_os("CHI_SCREENSHOTS") {
        Some(dir) => repo_root().join(dir),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"),
    };
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir.join(name).to_string_lossy().into_owned()
}

/// `scripts/browser WHAT`: the path it prints, installing what is missing.
pub(super) fn browser(what: &str) -> PathBuf {
    let out = Command::new(repo_root().join("scripts/browser"))
        .arg(what)
        .output()
        .expect("run scripts/browser");
    assert!(
        out.status.success(),
        "scripts/browser {what} failed (the console tests need node, playwright-core and chromium; CI={}): {}",
        std::env::var("CI").unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "scripts/browser {what}: no {}",
        path.display()
    );
    path
}

/// The browser tests load the machine: one at a time.
pub(super) fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(chi_test_support::heavy())
}

/// Headless Chromium with the console open, driven one command at a time.
pub(super) struct Browser {
    proc: Proc,
}

impl Browser {
    pub(super) fn start() -> Browser {
        let chromium = browser("chromium");
        let modules = browser("node-path");
        let mut cmd = Command::new("node");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/drive.js"))
            .arg(chromium)
            .env("NODE_PATH", modules)
            .stdin(Stdio::piped());
        let mut proc = Proc::spawn(cmd);
        proc.wait_line("the driver's ready line", |l| l == "ready");
        Browser { proc }
    }

    /// Runs one command; its answer (the test fails on an error).
    pub(super) fn run(&mut self, command: Value) -> Value {
        let stdin = self.proc.child.stdin.as_mut().expect("the driver's stdin");
        writeln!(stdin, "{command}").expect("write to the driver");
        stdin.flush().expect("flush");
        let line = self.proc.wait_line("an answer", |l| l.starts_with('{'));
        let answer: Value = serde_json::from_str(&line).expect("a JSON answer");
        assert_eq!(answer["ok"], true, "{command}: {}", answer["error"]);
        answer
    }

    /// The visible rows: key -> (health, why, cells).
    pub(super) fn visible(answer: &Value) -> BTreeMap<String, (String, String, Vec<String>)> {
        answer["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                let cells = r["cells"]
                    .as_array()
                    .map(|c| {
                        c.iter()
                            .map(|v| v.as_str().unwrap_or_default().to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                (text("key"), (text("health"), text("why"), cells))
            })
            .collect()
    }

    pub(super) fn text(&mut self, selector: &str, has: &str) -> String {
        let answer = self.run(json!({"cmd": "text", "selector": selector, "has": has}));
        answer["text"].as_str().unwrap_or_default().to_owned()
    }

    /// Every text on the page has a contrast of at least 4.5:1 (WCAG AA for normal text).
    pub(super) fn assert_contrast(&mut self) {
        let worst = self.run(json!({"cmd": "contrast"}));
        let ratio = worst["ratio"].as_f64().unwrap_or(0.0);
        eprintln!("lowest text contrast {ratio:.2}:1, {}", worst["what"]);
        assert!(ratio >= 4.5, "contrast {ratio:.2}:1 for {}", worst["what"]);
    }

    /// Script errors and failed loads the page reported so far.
    pub(super) fn errors(&mut self) -> Value {
        self.run(json!({"cmd": "errors"}))["errors"].clone()
    }

    /// The page reported no script error nor failed load.
    pub(super) fn no_errors(&mut self) {
        assert_eq!(self.errors(), json!([]), "the page reported errors");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(stdin) = self.proc.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{}", json!({"cmd": "close"}));
        }
        let _ = self.proc.child.wait();
    }
}

/// One HTTP/1.1 request; the status and body.
pub(super) fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (
        status,
        resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
    )
}

/// Instances registered through an agent's API and kept alive (with their health) every second
/// by a thread, until removed.
pub(super) struct Fleet {
    admin: String,
    pub(super) live: Arc<Mutex<Vec<(Value, &'static str)>>>,
    stop: Arc<AtomicBool>,
}

impl Fleet {
    pub(super) fn new(admin: &str) -> Fleet {
        let live: Arc<Mutex<Vec<(Value, &'static str)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s, a) = (live.clone(), stop.clone(), admin.to_owned());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let all = l.lock().expect("fleet").clone();
                for (i, health) in all {
                    let path = format!(
                        "/v1/services/{}/instances/{}/keepalive",
                        i["name"].as_str().unwrap_or_default(),
                        i["id"].as_str().unwrap_or_default()
                    );
                    let body = json!({"instance": i, "health": health}).to_string();
                    let _ = http(&a, "POST", &path, &body);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Fleet {
            admin: admin.to_owned(),
            live,
            stop,
        }
    }

    /// Registers `id` of `service` at 127.0.0.1:`port`.
    pub(super) fn add(
        &self,
        service: &str,
        id: &str,
        port: u16,
        health: &'static str,
        extra: Value,
    ) {
        let mut i = json!({"id": id, "name": service, "address": "127.0.0.1", "port": port, "health": health});
        if let (Some(i), Some(extra)) = (i.as_object_mut(), extra.as_object()) {
            i.extend(extra.clone());
        }
        let path = format!("/v1/services/{service}/instances/{id}");
        let (status, body) = http(&self.admin, "PUT", &path, &i.to_string());
        assert_eq!(status, 204, "register {service}/{id}: {body}");
        self.live.lock().expect("fleet").push((i, health));
    }

    /// Deregisters `id` of `service`.
    pub(super) fn remove(&self, service: &str, id: &str) {
        self.live
            .lock()
            .expect("fleet")
            .retain(|(i, _)| i["id"] != id);
        let (status, body) = http(
            &self.admin,
            "DELETE",
            &format!("/v1/services/{service}/instances/{id}"),
            "",
        );
        assert_eq!(status, 204, "deregister {service}/{id}: {body}");
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
