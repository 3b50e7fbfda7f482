//! Health checking: active probes, one threshold state machine, a scheduler, passive outlier
//! detection and the panic threshold.
//!
//! The pieces are small and apart, as in pingora's `health_check.rs`, where the probe knows
//! nothing of thresholds:
//!
//! - a [`HealthCheck`] is a check's settings (what to probe, how often, how
//!   long to wait); [`probe_for`] turns it into the probe that runs it;
//! - a [`Probe`] answers one question, "does this instance answer right now?":
//!   `HttpProbe` (GET, 2xx or a configured status range; feature `http`), [`TcpProbe`] (connect)
//!   and `GrpcProbe` (`grpc.health.v1.Health/Check`, `SERVING`; feature `grpc`);
//! - [`HealthState`] turns a run of probe results into a status with HAProxy's `rise` / `fall`
//!   thresholds ([`Thresholds`], default rise 2 / fall 3), so one lost packet does not take an
//!   instance out and one lucky answer does not put it back;
//! - [`HealthChecker`] runs the probes: each instance at its interval (jittered, never two checks
//!   of one instance at once, at most `max_concurrency` checks in flight), follows a service through
//!   a [`Membership`] (the [`DiscoveryClient`](crate::DiscoveryClient) is one) and lays every
//!   transition over the discovery snapshot, so `healthy_only` filters and balancers see it;
//!   [`HealthChecker::check_own`] does the same for the service's own registration through a
//!   [`HealthSink`] (the [`ServiceManager`](crate::ServiceManager): Consul TTL pass/fail, Nacos
//!   healthy flag) and deregisters it after `deregister_critical_service_after`;
//! - [`OutlierDetector`] is the passive side, Envoy's consecutive-failure outlier detection: the
//!   caller reports request outcomes, an instance with too many failures in a row is ejected for a
//!   time that grows with each ejection, and a cheap [`OutlierDetector::is_ejected`] lets balancers
//!   skip it;
//! - [`PanicThreshold`] is Envoy's panic mode (Nacos calls it the protect threshold): when too few
//!   instances are usable, balance over all of them rather than crush the survivors.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use chi_discovery::health::{HealthChecker, OutlierDetector, PanicThreshold, Thresholds};
//! use chi_discovery::{DiscoveryClient, HealthCheck, registry::Memory};
//!
//! # async fn demo() -> chi_discovery::Result<()> {
//! let client = DiscoveryClient::new(Arc::new(Memory::new()));
//! // Active: probe every instance of `user-service`; results reach `healthy_only` discovery.
//! let checker = HealthChecker::builder()
//!     .thresholds(Thresholds::new(2, 3))
//!     .build(client.clone());
//! let check = HealthCheck::http("/health")
//!     .every(Duration::from_secs(5))
//!     .timeout(Duration::from_secs(1));
//! checker.watch("user-service", check).await?;
//!
//! // Passive: the caller reports request outcomes.
//! let outliers = OutlierDetector::default();
//! outliers.record_failure("user-service-10.0.0.7-8080");
//!
//! // What to balance over: usable and not ejected, or everything in panic mode.
//! let snapshot = client.discover("user-service").await?;
//! let pick_from = PanicThreshold::default().select(snapshot.instances(), |i| {
//!     i.health.is_usable() && !outliers.is_ejected(&i.id)
//! });
//! # let _ = pick_from;
//! # Ok(()) }
//! ```
//!
//! # What a check may probe
//!
//! Registry data is not trusted to point a checker anywhere: every probe targets the instance's own
//! `address:port` (an HTTP path, a TCP connect, a gRPC call). A check that names another place (an
//! absolute URL or a `host:port` whose host is not the instance's address) is refused with
//! [`CheckError::Target`] unless the probe was built with `allow_other_hosts(true)`. HTTP checks do
//! not follow redirects and ignore proxy environment variables for the same reason.

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "http")]
mod http;
mod outlier;
mod panic;
mod scheduler;
mod sink;
mod state;
mod tcp;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "grpc")]
pub use grpc::GrpcProbe;
#[cfg(feature = "http")]
pub use http::HttpProbe;
pub use outlier::{OutlierConfig, OutlierDetector};
pub use panic::{Balanced, DEFAULT_PANIC_THRESHOLD, PanicThreshold};
pub use scheduler::{
    CheckerBuilder, DEFAULT_JITTER, DEFAULT_MAX_CONCURRENCY, HealthChecker, InstanceHealth,
    OwnCheck, Transition,
};
pub use sink::{HealthSink, Membership};
pub use state::{HealthState, Thresholds};
pub use tcp::TcpProbe;

use crate::error::{Error, Result};
use crate::instance::{CheckTarget, HealthCheck, Instance};

/// Why one probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// No answer within the probe's timeout.
    #[error("no answer within {after:?}")]
    Timeout {
        /// The timeout.
        after: Duration,
    },
    /// The connection could not be made (refused, reset, unreachable).
    #[error("connect failed: {message}")]
    Connect {
        /// What the transport said.
        message: String,
    },
    /// The HTTP answer had a status outside the expected range.
    #[error("HTTP status {status} is outside {expected}")]
    HttpStatus {
        /// The status received.
        status: u16,
        /// The expected range, e.g. `200..=299`.
        expected: String,
    },
    /// The gRPC health service answered, but not `SERVING`.
    #[error("gRPC health status is {status}")]
    NotServing {
        /// The status received (`NOT_SERVING`, `UNKNOWN`, `SERVICE_UNKNOWN`).
        status: String,
    },
    /// The server answered something the probe could not use (a gRPC error, a broken response).
    #[error("protocol error: {message}")]
    Protocol {
        /// What went wrong.
        message: String,
    },
    /// The check's target is not acceptable for this instance (see the module docs).
    #[error("refused target: {message}")]
    Target {
        /// Why.
        message: String,
    },
}

/// One active health probe: does `instance` answer right now?
///
/// A probe is stateless about history (the thresholds live in [`HealthState`]) and must bound its
/// own time; the scheduler also cancels a probe that overruns the check's timeout.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// Probes `instance` once.
    async fn check(&self, instance: &Instance) -> Result<(), CheckError>;

    /// A short name for logs (`http`, `tcp`, `grpc`).
    fn kind(&self) -> &'static str;
}

/// Builds the built-in probe for a [`HealthCheck`] definition, with its timeout and the
/// default options (targets limited to the instance's own address).
///
/// A [`CheckTarget::Ttl`] check has no probe (the service reports its own health through
/// [`ServiceManager::set_health`](crate::ServiceManager::set_health)); it is an
/// [`Error::Invalid`]. To probe another host on purpose, build the probe with
/// `allow_other_hosts(true)` and pass it to [`HealthChecker::watch_with`].
pub fn probe_for(check: &HealthCheck) -> Result<Arc<dyn Probe>> {
    Ok(match &check.target {
        #[cfg(feature = "http")]
        CheckTarget::Http(target) => {
            Arc::new(HttpProbe::new(target.clone())?.timeout(check.timeout))
        }
        #[cfg(not(feature = "http"))]
        CheckTarget::Http(_) => return Err(not_built("http", "http")),
        CheckTarget::Tcp(target) => Arc::new(TcpProbe::new(target.clone())?.timeout(check.timeout)),
        #[cfg(feature = "grpc")]
        CheckTarget::Grpc(service) => {
            Arc::new(GrpcProbe::new(service.clone()).timeout(check.timeout))
        }
        #[cfg(not(feature = "grpc"))]
        CheckTarget::Grpc(_) => return Err(not_built("grpc", "grpc")),
        CheckTarget::Ttl => {
            return Err(Error::invalid(
                "health check",
                "ttl",
                "a TTL check has no probe: the service reports its health with ServiceManager::set_health",
            ));
        }
    })
}

/// The refusal of a check whose probe this build left out (a cargo feature off).
#[cfg(any(not(feature = "http"), not(feature = "grpc")))]
fn not_built(kind: &'static str, feature: &str) -> Error {
    Error::invalid(
        "health check",
        kind,
        format!("this build has no {kind} probe: enable chi-discovery's `{feature}` feature"),
    )
}

/// The host part of an instance address, without IPv6 brackets, lowercased.
fn bare_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// True if `host` names the instance's own address.
fn is_own_host(instance: &Instance, host: &str) -> bool {
    bare_host(host) == bare_host(&instance.address)
}
