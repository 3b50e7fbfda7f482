//! What the manager tells its caller: the outcome of one registration on each backend
//! ([`RegistrationReport`]), where every registration stands now ([`RegistrationStatus`]), and
//! each change of that standing as it happens ([`BackendEvent`]).
//!
//! With several registries a registration can be partial: held by some backends while others
//! fail. [`ServiceManager::register`](super::ServiceManager::register) then answers `Ok` with a
//! report that says so, because the instance *is* discoverable and the manager keeps retrying
//! the missing backends on its own; a caller that wants all or nothing turns a partial report
//! into [`Error::PartialRegistration`] with [`RegistrationReport::require_complete`].

use crate::error::{Error, Result};
use crate::health::InstanceHealth;
use crate::instance::{HealthStatus, Instance};

/// The outcome of one registration on each backend.
///
/// A report is only ever returned when at least one backend holds the registration (none:
/// [`Error::Backends`]). The backends that failed are retried in the background until they hold
/// it too; [`ServiceManager::subscribe`](super::ServiceManager::subscribe) tells when.
#[derive(Debug)]
pub struct RegistrationReport {
    /// The registered instance's id.
    pub id: String,
    /// `(backend, result)` for every backend, in the registry's order.
    pub results: Vec<(String, Result<()>)>,
}

impl RegistrationReport {
    /// True if every backend holds the registration.
    pub fn is_complete(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }

    /// The backends that hold the registration.
    pub fn registered(&self) -> impl Iterator<Item = &str> {
        self.results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(b, _)| b.as_str())
    }

    /// Backends that failed (they are retried in the background).
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.results
            .iter()
            .filter_map(|(b, r)| r.as_ref().err().map(|e| (b.as_str(), e)))
    }

    /// All or nothing: the report when every backend holds the registration, else
    /// [`Error::PartialRegistration`] naming the backends that hold it and the ones that failed
    /// (with their errors). The manager keeps retrying those either way; to take the instance
    /// out of every registry instead, call
    /// [`ServiceManager::deregister`](super::ServiceManager::deregister).
    ///
    /// ```no_run
    /// # async fn f(manager: chi_discovery::ServiceManager) -> chi_discovery::Result<()> {
    /// let config = chi_discovery::ServiceConfig::new("user-service", "10.0.0.7", 8080);
    /// let report = manager.register(config).await?.require_complete()?;
    /// # let _ = report; Ok(()) }
    /// ```
    pub fn require_complete(self) -> Result<Self> {
        if self.is_complete() {
            return Ok(self);
        }
        let mut registered = Vec::new();
        let mut failures = Vec::new();
        for (backend, result) in self.results {
            match result {
                Ok(()) => registered.push(backend),
                Err(e) => failures.push((backend, e)),
            }
        }
        Err(Error::PartialRegistration {
            id: self.id,
            registered,
            failures,
        })
    }
}

/// Where one registration stands on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// Backend name.
    pub backend: String,
    /// True when the backend holds the registration, as far as the last successful call knows
    /// (a backend that stops answering may still hold it: this stays true while its
    /// keep-alives fail, and [`BackendStatus::failures`] counts them).
    pub registered: bool,
    /// Consecutive failures since the last success.
    pub failures: u32,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// How many times the instance was registered again after the backend lost it.
    pub reregistrations: u64,
    /// Failed registration and keep-alive calls since the registration (not reset by a
    /// success).
    pub errors: u64,
}

impl BackendStatus {
    /// True when the backend holds the registration and its last call succeeded.
    pub fn is_up(&self) -> bool {
        self.registered && self.failures == 0
    }
}

/// One managed registration and its per-backend status.
#[derive(Debug, Clone)]
pub struct RegistrationStatus {
    /// The instance.
    pub instance: Instance,
    /// Health reported with keep-alives.
    pub health: HealthStatus,
    /// True when chi probes the registration in this process (no backend runs its check).
    pub probed_here: bool,
    /// What that probe knows (`None` before its first verdict, or with no probe).
    pub probe: Option<InstanceHealth>,
    /// One entry per backend.
    pub backends: Vec<BackendStatus>,
}

/// A change in where one registration stands on one backend, from
/// [`ServiceManager::subscribe`](super::ServiceManager::subscribe). The manager logs each one
/// too (`tracing`: `Registered` and `Reregistered` at info, `Failing` at warn).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEvent {
    /// The instance's service.
    pub service: String,
    /// The instance's id.
    pub id: String,
    /// The backend.
    pub backend: String,
    /// What changed.
    pub change: BackendChange,
}

/// What changed; see [`BackendEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendChange {
    /// The backend holds the registration: the first registration there, or calls work again
    /// after failing.
    Registered,
    /// The backend had lost the registration (a registry restarted empty, an expired lease) and
    /// holds it again.
    Reregistered,
    /// A registration or keep-alive call failed: the first failure of a run (the failures that
    /// follow in a row are not repeated here; [`BackendStatus::failures`] counts them). The
    /// manager retries.
    Failing {
        /// What the backend said.
        error: String,
    },
}
