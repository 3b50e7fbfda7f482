//! Test support shared by chi's crates (not published).
//!
//! - real registries on loopback: `etcd` (feature `etcd`), [`consul`], [`nacos`] and [`zookeeper`]
//!   start the real servers as child processes on free ports ([`Proc`] kills them on drop);
//!   [`zookeeper::Kazoo`] is a foreign ZooKeeper client (Python's kazoo); [`dns`] starts dnsmasq
//!   and bind9's `named` the same way;
//! - [`proxy::Proxy`]: a TCP forwarder that cuts clients off from a server (a partition);
//! - [`grpc::HealthServer`]: a tonic server with the standard gRPC health service, for probes;
//! - [`fault::Faulty`]: a [`Registry`](chi_discovery::Registry) wrapper that fails every call on
//!   demand, to rehearse an outage in the layers above the registry;
//! - small helpers for timing on a loaded machine ([`eventually`], [`heavy`], [`scaled`]).
//!
//! Registry binaries come from `scripts/registry install` (cached in
//! `${CHI_CACHE:-$HOME/.cache/chi}/bin`), or from `CHI_ETCD_BIN`, `CHI_CONSUL_BIN`,
//! `CHI_NACOS_BIN`. A missing binary is a test failure, never a skip: the README's test command
//! installs them first.
//!
//! The `etcd` feature adds the etcd harness: etcd's client needs `protoc` to build, and the
//! library's default build and its examples (which build this crate as a dev-dependency) must not.
//! The `nacos` feature adds `NacosServer::config`, a client config for the server; it needs the
//! library's Nacos adapter, so the library's own `nacos` feature turns it on for its tests.
//!
//! It lives in a crate of its own so the library's integration tests and the CLI's tests share one
//! copy instead of including each other's files.

pub mod consul;
pub mod dns;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod fault;
pub mod grpc;
pub mod nacos;
mod process;
pub mod proxy;
pub mod zookeeper;

pub use process::{Proc, binary};

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

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
