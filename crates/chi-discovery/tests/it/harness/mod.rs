//! Starts real registries on loopback for the tests.
//!
//! Binaries come from `scripts/registry install` (cached in `${CHI_CACHE:-$HOME/.cache/chi}/bin`),
//! or from `CHI_ETCD_BIN`, `CHI_CONSUL_BIN`, `CHI_NACOS_BIN`. A missing binary is a test failure,
//! never a skip: the README's test command installs them first.

#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "nacos")]
pub mod nacos;

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a registry binary (`etcd`, `consul`, `rnacos`). Panics with the fix when missing.
pub fn binary(name: &str) -> PathBuf {
    let env = format!("CHI_{}_BIN", name.trim_start_matches('r').to_uppercase());
    if let Ok(p) = std::env::var(&env) {
        return PathBuf::from(p);
    }
    let cache = std::env::var("CHI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/chi")
        });
    let path = cache.join("bin").join(name);
    assert!(
        path.exists(),
        "registry binary `{name}` not found at {} (nor ${env}); run `scripts/registry install` \
         (the README's test command does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Polls `check` until it returns true or `timeout` passes; returns the time it took.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub name: String,
    cmd: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `program args...`, output appended to `log`.
    pub fn spawn(name: &str, program: &std::path::Path, args: &[String], log: PathBuf) -> Proc {
        let mut cmd = vec![program.display().to_string()];
        cmd.extend(args.iter().cloned());
        let mut p = Proc {
            name: name.to_owned(),
            cmd,
            log,
            child: None,
        };
        p.start();
        p
    }

    /// (Re)starts the process with the same command line.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let err = out.try_clone().expect("clone log");
        let child = Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when the reliability suite runs in soak mode (`CHI_SOAK=1`, set by `scripts/reliability
/// --soak`): fault and churn tests then run longer (see [`scaled`]).
pub fn soak() -> bool {
    matches!(std::env::var("CHI_SOAK").as_deref(), Ok("1" | "true"))
}

/// `ci` in a normal run, `soak` in soak mode: how long a fault or churn phase lasts.
pub fn scaled(ci: Duration, soak_for: Duration) -> Duration {
    if soak() { soak_for } else { ci }
}

/// Resident set size of this process in KiB (from `/proc/self/status`), for memory-bound checks.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Taken by the tests that load the machine (kills under load, churn, 1,000-change watches) so
/// that two of them never run at once on a 2-core CI machine; timing-sensitive tests may take it
/// too. Hold the guard for the whole test.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}
