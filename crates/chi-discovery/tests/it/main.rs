//! Integration tests: one binary, one module per area. Registry tests run against real servers
//! that `chi_test_support` starts on loopback.
//!
//! The reliability suite (`faults`, `cluster`, `partition`, `churn`, `herd`, `stub`, `names`,
//! `secrets`, `multi_real`, `zookeeper_faults`) is part of this binary; `CHI_SOAK=1` (via
//! `scripts/reliability --soak`) makes its long phases longer.

mod health;
#[cfg(all(
    feature = "orca",
    feature = "grpc",
    feature = "tower",
    feature = "http",
    feature = "axum"
))]
mod orca;
#[cfg(all(feature = "orca", feature = "grpc", feature = "tower"))]
mod orca_grpc_js;
mod outage;

#[cfg(feature = "consul")]
mod consul;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "dns")]
mod dns_watch;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "nacos")]
mod nacos;
#[cfg(feature = "zookeeper")]
mod zookeeper;
#[cfg(feature = "zookeeper")]
mod zookeeper_faults;

#[cfg(all(feature = "etcd", feature = "consul", feature = "nacos"))]
mod checks;
#[cfg(all(feature = "etcd", feature = "consul", feature = "nacos"))]
mod churn;
#[cfg(all(feature = "etcd", feature = "consul", feature = "nacos"))]
mod cluster;
#[cfg(all(feature = "etcd", feature = "consul", feature = "nacos"))]
mod faults;
#[cfg(feature = "etcd")]
mod herd;
#[cfg(feature = "etcd")]
mod last_good;
#[cfg(all(feature = "etcd", feature = "consul", feature = "nacos"))]
mod multi_real;
#[cfg(all(feature = "etcd", feature = "consul", feature = "nacos"))]
mod names;
#[cfg(feature = "etcd")]
mod partition;
#[cfg(all(
    feature = "tower",
    feature = "http",
    feature = "grpc",
    feature = "metrics"
))]
mod picks;
#[cfg(all(feature = "etcd", feature = "consul", feature = "nacos"))]
mod secrets;
#[cfg(feature = "consul")]
mod stub;
#[cfg(all(feature = "axum", feature = "http"))]
mod user_order;
