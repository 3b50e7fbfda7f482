//! Active health checks: what a registration asks a registry (or chi itself) to probe, and how
//! often.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an active health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckTarget {
    /// HTTP GET; a path (`/health`, resolved against the instance) or a full URL. Healthy on 2xx.
    Http(String),
    /// TCP connect to `host:port` (empty: the instance's own address).
    Tcp(String),
    /// `grpc.health.v1.Health/Check` with this service name (empty: the server as a whole).
    Grpc(String),
    /// No probe: the service itself reports its health before the TTL runs out (Consul TTL check).
    Ttl,
}

/// Who runs a registration's check: the registry itself, or chi in the registering process.
///
/// Consul's agent can run HTTP, TCP and gRPC checks itself; etcd, Nacos and the embedded
/// registry cannot, so there chi probes and gates the lease or heartbeat on the verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckedBy {
    /// The registry where it can (Consul: HTTP, TCP, gRPC), chi everywhere else.
    #[default]
    Auto,
    /// The registry only; registering on one that cannot run the check is an error.
    Registry,
    /// chi only: it probes in this process and reports the verdict (to Consul as a TTL check, for
    /// an address the Consul agent cannot reach).
    Chi,
}

impl CheckedBy {
    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckedBy::Auto => "auto",
            CheckedBy::Registry => "registry",
            CheckedBy::Chi => "chi",
        }
    }
}

impl CheckTarget {
    /// The target as a config file writes it: `http /health`, `tcp :8080`, `grpc`, `ttl`.
    pub fn describe(&self) -> String {
        match self {
            CheckTarget::Http(t) => format!("http {t}"),
            CheckTarget::Tcp(t) if t.is_empty() => "tcp".to_owned(),
            CheckTarget::Tcp(t) => format!("tcp {t}"),
            CheckTarget::Grpc(s) if s.is_empty() => "grpc".to_owned(),
            CheckTarget::Grpc(s) => format!("grpc {s}"),
            CheckTarget::Ttl => "ttl".to_owned(),
        }
    }
}

/// A check's settings: what to probe, how often, how long one probe may take, who probes. The
/// probe that runs it in-process is a `health::HttpProbe`, `TcpProbe` or `GrpcProbe`
/// ([`health::probe_for`](crate::health::probe_for) picks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What to probe.
    pub target: CheckTarget,
    /// How often to probe (also the TTL of a TTL check).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one probe may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Deregister an instance that stayed unhealthy this long (Consul's
    /// `DeregisterCriticalServiceAfter`). `None`: never.
    #[serde(default, with = "humantime_serde")]
    pub deregister_critical_service_after: Option<Duration>,
    /// Who runs the check (default [`CheckedBy::Auto`]).
    #[serde(default)]
    pub checked_by: CheckedBy,
    /// Successes in a row that make an unhealthy instance healthy (`None`: when chi probes, the
    /// checker's default, 2; Consul's agent, running the check itself, gets it as
    /// `SuccessBeforePassing`, and without it counts every result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Failures in a row that make a healthy instance unhealthy (`None`: when chi probes, the
    /// checker's default, 3; Consul's agent gets it as `FailuresBeforeCritical`, and without it
    /// counts every result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
}

impl HealthCheck {
    /// An HTTP check of `path_or_url` every 10 s with a 3 s timeout.
    pub fn http(path_or_url: impl Into<String>) -> Self {
        Self::with_target(CheckTarget::Http(path_or_url.into()))
    }

    /// A TCP check of the instance's own address every 10 s with a 3 s timeout.
    pub fn tcp() -> Self {
        Self::with_target(CheckTarget::Tcp(String::new()))
    }

    /// A gRPC health check of `service` every 10 s with a 3 s timeout.
    pub fn grpc(service: impl Into<String>) -> Self {
        Self::with_target(CheckTarget::Grpc(service.into()))
    }

    /// A TTL check: the service must report within every `interval`.
    pub fn ttl(interval: Duration) -> Self {
        HealthCheck {
            interval,
            ..Self::with_target(CheckTarget::Ttl)
        }
    }

    fn with_target(target: CheckTarget) -> Self {
        HealthCheck {
            target,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
            deregister_critical_service_after: None,
            checked_by: CheckedBy::Auto,
            rise: None,
            fall: None,
        }
    }

    /// Sets the interval.
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets `deregister_critical_service_after`.
    pub fn deregister_after(mut self, after: Duration) -> Self {
        self.deregister_critical_service_after = Some(after);
        self
    }

    /// Sets who runs the check.
    pub fn checked_by(mut self, by: CheckedBy) -> Self {
        self.checked_by = by;
        self
    }

    /// Sets the rise / fall thresholds of chi's probe.
    pub fn thresholds(mut self, rise: u32, fall: u32) -> Self {
        self.rise = Some(rise.max(1));
        self.fall = Some(fall.max(1));
        self
    }

    /// True for the checks a registry's agent can run (HTTP, TCP, gRPC); a TTL check is fed by
    /// the service.
    pub fn is_active(&self) -> bool {
        self.target != CheckTarget::Ttl
    }
}
