//! One error type for the whole library.
//!
//! Every variant carries the context a reader needs to act on it (which service, which backend,
//! which config field). Secrets never reach an error: adapters build their messages from redacted
//! values only.

use std::time::Duration;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Boxed source error of a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in chi.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service has no instance to pick (after filters, routing and health).
    #[error("no instance of service `{service}` is available")]
    NoInstance {
        /// Service name.
        service: String,
    },

    /// A registry backend failed.
    #[error("registry `{backend}`: {source}")]
    Registry {
        /// Backend name (`memory`, `etcd`, `consul`, `nacos`).
        backend: String,
        /// What the backend said.
        #[source]
        source: BoxError,
    },

    /// Several backends of a multi-registry failed; the others succeeded or were not tried.
    #[error("{} of the registries failed: {}", failures.len(), display_failures(failures))]
    Backends {
        /// `(backend, error)` for every failing backend.
        failures: Vec<(String, Error)>,
    },

    /// A registration is held by some backends of a multi-registry and not by others. A
    /// [`ServiceManager`](crate::ServiceManager) keeps retrying the backends that failed (see
    /// [`RegistrationReport::require_complete`](crate::manager::RegistrationReport::require_complete)).
    #[error(
        "instance `{id}` is registered in {} but not in {}",
        registered.join(", "),
        display_failures(failures)
    )]
    PartialRegistration {
        /// The instance's id.
        id: String,
        /// The backends that hold it.
        registered: Vec<String>,
        /// `(backend, error)` for every backend that does not.
        failures: Vec<(String, Error)>,
    },

    /// A registry call did not answer in time.
    #[error("registry `{backend}` did not answer within {after:?}")]
    Timeout {
        /// Backend name.
        backend: String,
        /// The deadline that passed.
        after: Duration,
    },

    /// The registry is not reachable or refused the call; a stale list may still be served.
    #[error("registry `{backend}` is unavailable: {message}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// Why.
        message: String,
    },

    /// A configuration value is invalid. `field` is the YAML path.
    #[error("{field}: {message}")]
    Config {
        /// YAML path of the field, e.g. `service_discovery.discovery.cache.ttl`.
        field: String,
        /// What was wrong and what was expected.
        message: String,
    },

    /// An argument (service name, instance id, ...) is not acceptable.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        /// What kind of value (`service name`, `instance id`, `tag`...).
        what: &'static str,
        /// The offending value (never a secret).
        value: String,
        /// What was expected.
        reason: String,
    },

    /// Every instance a request could go to has `max_requests` in flight (circuit breaking).
    #[error(
        "every instance of service `{service}` has {max_requests} requests in flight (circuit breaker)"
    )]
    Overloaded {
        /// The service.
        service: String,
        /// The per-instance bound.
        max_requests: u32,
    },

    /// Serving this process's own endpoint failed (binding its port, accepting connections).
    #[error("serving on {address}: {source}")]
    Serve {
        /// The address served on.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A watch stream ended or lost its source.
    #[error("watch of service `{service}` ended: {message}")]
    WatchClosed {
        /// Service name.
        service: String,
        /// Why.
        message: String,
    },
}

/// `error: cause: cause...`: transport errors (hyper, tonic, reqwest) hide the useful part in their
/// sources, so messages shown to people walk the whole chain.
pub fn display_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn display_failures(failures: &[(String, Error)]) -> String {
    failures
        .iter()
        .map(|(backend, err)| format!("[{backend}] {err}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// Wraps a backend error.
    pub fn registry(backend: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Registry {
            backend: backend.into(),
            source: source.into(),
        }
    }

    /// A config error at `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An invalid argument.
    pub fn invalid(
        what: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            what,
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// True when retrying the same call later may succeed (outage, timeout), as opposed to a
    /// request that will always fail (bad input, bad config).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Registry { .. } | Error::Timeout { .. } | Error::Unavailable { .. } => true,
            Error::WatchClosed { .. } => true,
            Error::Backends { failures } | Error::PartialRegistration { failures, .. } => {
                failures.iter().any(|(_, e)| e.is_transient())
            }
            Error::NoInstance { .. } | Error::Config { .. } | Error::Invalid { .. } => false,
            Error::Serve { .. } => false,
            Error::Overloaded { .. } => true,
        }
    }
}
