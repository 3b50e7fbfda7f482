//! Where a registration's health check runs, per backend.
//!
//! Each registry keeps instances healthy its own way, so one [`HealthCheck`] becomes:
//!
//! - **Consul**: the check itself, run by the agent (HTTP, TCP, gRPC with interval, timeout and
//!   `DeregisterCriticalServiceAfter`), so that Consul reaps an instance whose process died even
//!   when nothing of chi survives it. With [`CheckedBy::Chi`] (an address the agent cannot
//!   reach) Consul gets a TTL check instead, fed by chi's probe, carrying the same
//!   deregister-after: a dead process stops feeding it and Consul reaps it all the same.
//! - **etcd, Nacos, the embedded registry**: no server-side checks, so chi probes in this
//!   process, with rise / fall thresholds (HAProxy's), and the manager reports the verdict with
//!   each keep-alive (the instance's health in its etcd value, Nacos' healthy flag). An
//!   instance whose probe fails leaves healthy discovery within `interval × fall` and comes back
//!   within `interval × rise`.
//!
//! [`CheckedBy::Registry`] on a registry that runs no checks is refused before anything is
//! registered: a check that nobody runs would be a silent drop.

use std::sync::{Arc, Weak};

use super::Inner;
use crate::error::{Error, Result};
use crate::health::HealthSink;
use crate::instance::{CheckTarget, CheckedBy, HealthCheck, HealthStatus};
use crate::registry::Registry;

/// How one check is carried out.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Per backend, in order: the checks that backend runs itself.
    pub(super) registry_checks: Vec<Vec<HealthCheck>>,
    /// The check chi probes in this process, if any backend needs it.
    pub(super) local: Option<HealthCheck>,
}

/// Plans `check` over `backends`.
pub(super) fn plan(backends: &[Arc<dyn Registry>], check: Option<&HealthCheck>) -> Result<Plan> {
    let Some(check) = check else {
        return Ok(Plan {
            registry_checks: vec![Vec::new(); backends.len()],
            local: None,
        });
    };
    let mut local = false;
    let mut registry_checks = Vec::with_capacity(backends.len());
    for backend in backends {
        let by_registry = match (&check.target, check.checked_by) {
            // Nothing to probe: the service reports itself (Consul holds it as a TTL check).
            (CheckTarget::Ttl, _) => backend.runs_check(check).then(|| check.clone()),
            (_, CheckedBy::Chi) => {
                local = true;
                let ttl = HealthCheck {
                    target: CheckTarget::Ttl,
                    ..check.clone()
                };
                backend.runs_check(&ttl).then_some(ttl)
            }
            (_, CheckedBy::Auto) if backend.runs_check(check) => Some(check.clone()),
            (_, CheckedBy::Auto) => {
                local = true;
                None
            }
            (_, CheckedBy::Registry) if backend.runs_check(check) => Some(check.clone()),
            (target, CheckedBy::Registry) => {
                return Err(Error::invalid(
                    "health check",
                    target.describe(),
                    format!(
                        "checked_by registry, but registry `{}` cannot run health checks \
                         (Consul can); use checked_by chi or auto",
                        backend.backend()
                    ),
                ));
            }
        };
        registry_checks.push(by_registry.into_iter().collect());
    }
    Ok(Plan {
        registry_checks,
        local: local.then(|| check.clone()),
    })
}

/// Where chi's own probe reports: the manager (held weakly, the manager owns the probe), for the
/// registration it was started with.
pub(super) struct OwnSink {
    pub(super) inner: Weak<Inner>,
    pub(super) generation: u64,
}

#[async_trait::async_trait]
impl HealthSink for OwnSink {
    fn set_health(&self, _service: &str, id: &str, health: HealthStatus) {
        if let Some(inner) = self.inner.upgrade() {
            inner.set_health(id, Some(self.generation), health);
        }
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        let current = inner.lock().get(id).map(|m| m.generation) == Some(self.generation);
        if !current {
            return Ok(());
        }
        inner.deregister(service, id).await
    }
}
