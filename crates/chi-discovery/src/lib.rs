//! # chi-discovery
//!
//! Service discovery and client-side load balancing for Rust services.
//!
//! - [`registry`]: one [`Registry`] abstraction over the embedded [`registry::Memory`] registry
//!   (the default), Consul, etcd v3, Nacos and ZooKeeper (cargo features `consul`, `etcd`,
//!   `nacos`, `zookeeper`), DNS SRV and A records, read-only (feature `dns`), and a
//!   [`registry::MultiRegistry`] that writes to several at once.
//! - [`ServiceManager`]: registers instances, keeps them alive, re-registers them when a registry
//!   lost them, deregisters them on shutdown.
//! - [`DiscoveryClient`]: discovery with filters, a cache of immutable snapshots that keeps serving
//!   the last good list through registry outages, watches and retries.
//! - [`balance`]: round robin, random, smooth weighted round robin, least connections, consistent
//!   hashing with bounded loads, ring hash, Maglev, P2C, peak EWMA, and weighted round robin by
//!   the servers' load reports (ORCA); built once per membership change, picked without locks.
//! - [`health`]: HTTP, TCP and gRPC probes (HTTP and gRPC behind the default features `http` and
//!   `grpc`) with rise/fall thresholds, outlier detection and the panic threshold.
//! - [`routing`]: version and region/zone routing and the smart router that chains them before
//!   the balancer.
//! - `orca` (feature `orca`, on by default): ORCA load reports, read from responses and
//!   out-of-band streams, and attached to this service's own responses.
//! - `metrics` (feature `metrics`): Prometheus metrics into a registry the caller passes in.
//! - [`integration`]: tower's `Discover` over a chi watch (feature `tower`), and an HTTP helper
//!   (feature `http`), both on by default.
//! - [`config`]: the `chi-config.yaml` file, validated with errors that name the field.
//! - [`Chi`]: all of the above from one config file: registration with its health check,
//!   discovery, per-service routers, metrics, deregistration on shutdown.
//!
//! ```no_run
//! use std::sync::Arc;
//! use chi_discovery::{DiscoveryClient, Filter, ServiceConfig, ServiceManager, registry::Memory};
//!
//! # async fn demo() -> chi_discovery::Result<()> {
//! let registry = Arc::new(Memory::new());
//! let manager = ServiceManager::new(registry.clone());
//! manager.register(ServiceConfig::new("user-service", "127.0.0.1", 8080)).await?;
//!
//! let client = DiscoveryClient::new(registry);
//! let all = client.discover("user-service").await?;
//! let v1 = client.discover_with_filter("user-service", &Filter::new().tag("v1")).await?;
//! # let _ = (all, v1);
//! manager.shutdown().await;
//! # Ok(()) }
//! ```

mod advertise;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod error;
pub mod health;
pub mod instance;
pub mod integration;
mod keyed;
pub mod manager;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "orca")]
pub mod orca;
pub mod registry;
pub mod retry;
pub mod routing;
pub mod secret;
mod snapshot;
pub mod stack;
mod util;

pub use advertise::host_address;
pub use discovery::{DiscoveryClient, OutagePolicy, Snapshot, Watcher};
pub use error::{Error, Result};
pub use instance::{
    CheckTarget, CheckedBy, Filter, HealthCheck, HealthStatus, Instance, ServiceConfig,
};
pub use manager::ServiceManager;
pub use registry::{Change, Liveness, Registry};
pub use retry::RetryPolicy;
pub use secret::Secret;
pub use stack::Chi;
