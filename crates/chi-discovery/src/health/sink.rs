//! Where the checker's verdicts go, as two small traits that the layers above implement.
//!
//! The health checker sits below discovery and the service manager: it decides health, and the
//! layer that owns the instance decides what a verdict means. The discovery client lays it over
//! its cached lists (and follows a service's membership for the checker); the service manager
//! reports it with its keep-alives. Health only names these traits, never those types, so it can
//! be used (and tested) without them.

use async_trait::async_trait;

use crate::error::Result;
use crate::instance::HealthStatus;
use crate::registry::WatchStream;

/// Where the verdicts on an instance go.
#[async_trait]
pub trait HealthSink: Send + Sync + 'static {
    /// A check decided that instance `id` of `service` is now `health`.
    fn set_health(&self, service: &str, id: &str, health: HealthStatus);

    /// Instance `id` of `service` has been unhealthy for the check's
    /// `deregister_critical_service_after`: take it out of the registry.
    async fn deregister(&self, service: &str, id: &str) -> Result<()>;
}

/// What [`HealthChecker::watch`](super::HealthChecker::watch) follows: a service's membership, with
/// the verdicts laid over it.
#[async_trait]
pub trait Membership: HealthSink {
    /// The instances of `service`: first a `Reset`, then changes. The stream resyncs on its own
    /// after an error item.
    async fn watch(&self, service: &str) -> Result<WatchStream>;

    /// Removes the verdict laid over instance `id` of `service`: nobody keeps it up to date any
    /// more.
    fn clear_health(&self, service: &str, id: &str);

    /// Reloads `service` from the registry, so a list still carrying cleared verdicts is replaced.
    async fn reload(&self, service: &str) -> Result<()>;
}
