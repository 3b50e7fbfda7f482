//! The data model: what a service instance is, how it is registered, and how it is filtered.
//!
//! [`Instance`] is what discovery returns and balancers pick from; [`ServiceConfig`] is what a
//! service registers (it becomes an `Instance` with [`ServiceConfig::instance`]); [`Filter`] is the
//! Go sketch's tag / meta / health filter. All of them are plain data with serde, so every backend can
//! store them as JSON and the CLI can print them.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Health of an instance as the registry (or chi's own checker) last saw it.
///
/// `Unknown` means no check has reported yet, or the backend keeps no health (etcd). Like Consul's
/// instances without checks, `Unknown` instances are *not* excluded by `healthy_only` filters: only
/// an instance known to be unhealthy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Checks pass.
    Healthy,
    /// Checks fail (Consul `critical`, Nacos `healthy=false`).
    Unhealthy,
    /// No information.
    #[default]
    Unknown,
}

impl HealthStatus {
    /// True unless the instance is known to be unhealthy.
    pub fn is_usable(self) -> bool {
        self != HealthStatus::Unhealthy
    }

    /// The lowercase name (`healthy`, `unhealthy`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The weight an instance gets when none is configured.
pub const DEFAULT_WEIGHT: u32 = 1;

/// A running copy of a service, as registered and discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Stable id, unique within the service (default `name-address-port`).
    pub id: String,
    /// Service name.
    pub name: String,
    /// Version, e.g. `v1.0.0` (may be empty).
    #[serde(default)]
    pub version: String,
    /// Host name or IP address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags (Consul tags; carried in metadata by Nacos and in the JSON value by etcd).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form metadata (`region`, `zone`, `env`...).
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Relative weight for weighted balancers; `0` takes the instance out of rotation.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Last known health.
    #[serde(default)]
    pub health: HealthStatus,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

impl Instance {
    /// A new instance with the default id `name-address-port`, weight 1 and unknown health.
    pub fn new(name: impl Into<String>, address: impl Into<String>, port: u16) -> Self {
        let name = name.into();
        let address = address.into();
        Instance {
            id: default_id(&name, &address, port),
            name,
            version: String::new(),
            address,
            port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weight: DEFAULT_WEIGHT,
            health: HealthStatus::Unknown,
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata pair.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the health.
    pub fn with_health(mut self, health: HealthStatus) -> Self {
        self.health = health;
        self
    }

    /// `address:port`, with IPv6 addresses in brackets.
    pub fn authority(&self) -> String {
        if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }

    /// True if the instance carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The metadata value of `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    /// The effective weight: the `weight` metadata key wins when it parses, else [`Instance::weight`].
    pub fn effective_weight(&self) -> u32 {
        self.meta("weight")
            .and_then(|w| w.trim().parse::<u32>().ok())
            .unwrap_or(self.weight)
    }

    /// Checks the fields every backend relies on: a valid service name and id, a non-empty
    /// address, a non-zero port.
    pub fn validate(&self) -> Result<()> {
        validate_name("service name", &self.name)?;
        validate_name("instance id", &self.id)?;
        if self.address.trim().is_empty() {
            return Err(Error::invalid(
                "address",
                &self.address,
                "must not be empty",
            ));
        }
        if self.port == 0 {
            return Err(Error::invalid("port", "0", "must be between 1 and 65535"));
        }
        Ok(())
    }
}

/// The id chi derives when none is given: `name-address-port`.
pub fn default_id(name: &str, address: &str, port: u16) -> String {
    format!("{name}-{address}-{port}")
}

/// True when `name` is a service name (or instance id) chi accepts: the rule of
/// [`Instance::validate`] (docs/DESIGN.md §9), for code that must tell a name every registry
/// takes from one none does before asking one, as `chi xds` does with the names clients send.
pub fn is_valid_name(name: &str) -> bool {
    validate_name("name", name).is_ok()
}

/// Checks a service name or instance id: 1..=256 characters, no `/`, no `..`, no control
/// characters, not only whitespace. Every backend builds keys or URLs from these, so this is what
/// keeps a name from escaping its prefix.
pub(crate) fn validate_name(what: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::invalid(what, value, "must not be empty"));
    }
    if value.len() > 256 {
        return Err(Error::invalid(
            what,
            format!("{}...", value.chars().take(32).collect::<String>()),
            format!("must be at most 256 bytes, got {}", value.len()),
        ));
    }
    if value.contains('/') || value.contains('\\') {
        return Err(Error::invalid(what, value, "must not contain `/` or `\\`"));
    }
    if value == "." || value.contains("..") {
        return Err(Error::invalid(what, value, "must not contain `..`"));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            what,
            value.escape_debug().to_string(),
            "must not contain control characters",
        ));
    }
    Ok(())
}

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

/// What a service registers: the Go sketch's `ServiceConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// Instance id; derived as `name-address-port` when `None`.
    #[serde(default)]
    pub id: Option<String>,
    /// Service name.
    pub name: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Address other services use to reach this instance.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Weight.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Health check, if any.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

impl ServiceConfig {
    /// A config for `name` at `address:port`, everything else default.
    pub fn new(name: impl Into<String>, address: impl Into<String>, port: u16) -> Self {
        ServiceConfig {
            id: None,
            name: name.into(),
            version: String::new(),
            address: address.into(),
            port,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weight: DEFAULT_WEIGHT,
            health_check: None,
        }
    }

    /// The instance id: the configured one or `name-address-port`.
    pub fn instance_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| default_id(&self.name, &self.address, self.port))
    }

    /// The instance this config registers (health `Unknown` until a check reports).
    pub fn instance(&self) -> Instance {
        Instance {
            id: self.instance_id(),
            name: self.name.clone(),
            version: self.version.clone(),
            address: self.address.clone(),
            port: self.port,
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            weight: self.weight,
            health: HealthStatus::Unknown,
        }
    }
}

/// The Go sketch's `Filter`: every listed tag present, every meta pair equal, and, with
/// `healthy_only`, no instance known to be unhealthy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Tags the instance must all carry.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata pairs the instance must all have, with equal values.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Drop instances whose health is [`HealthStatus::Unhealthy`].
    #[serde(default)]
    pub healthy_only: bool,
}

impl Filter {
    /// A filter that keeps everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Requires a metadata pair.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Keeps only usable (not unhealthy) instances.
    pub fn healthy_only(mut self) -> Self {
        self.healthy_only = true;
        self
    }

    /// True if the filter keeps everything.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.meta.is_empty() && !self.healthy_only
    }

    /// True if `instance` passes.
    pub fn matches(&self, instance: &Instance) -> bool {
        (!self.healthy_only || instance.health.is_usable())
            && self.tags.iter().all(|t| instance.has_tag(t))
            && self
                .meta
                .iter()
                .all(|(k, v)| instance.meta(k) == Some(v.as_str()))
    }

    /// The instances of `instances` that pass, cloned.
    pub fn apply(&self, instances: &[Instance]) -> Vec<Instance> {
        instances
            .iter()
            .filter(|i| self.matches(i))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_id_is_name_address_port() {
        let i = Instance::new("user-service", "10.0.0.1", 8080);
        assert_eq!(i.id, "user-service-10.0.0.1-8080");
        let cfg = ServiceConfig::new("user-service", "10.0.0.1", 8080);
        assert_eq!(cfg.instance().id, i.id);
        let cfg = ServiceConfig {
            id: Some("custom".into()),
            ..cfg
        };
        assert_eq!(cfg.instance().id, "custom");
    }

    #[test]
    fn names_cannot_escape_a_prefix() {
        for bad in ["", " ", "a/b", "..", "a..b", "x\\y", "a\nb", "."] {
            assert!(
                validate_name("service name", bad).is_err(),
                "{bad:?} accepted"
            );
        }
        for good in [
            "user-service",
            "user.service",
            "用户服务",
            "a b",
            "svc_1:grpc",
        ] {
            validate_name("service name", good).expect(good);
        }
        let long = "x".repeat(257);
        let err = validate_name("service name", &long)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most 256 bytes, got 257"), "{err}");
    }

    #[test]
    fn weight_meta_overrides_field() {
        let i = Instance::new("s", "h", 1).with_weight(3);
        assert_eq!(i.effective_weight(), 3);
        assert_eq!(i.clone().with_meta("weight", "7").effective_weight(), 7);
        assert_eq!(i.with_meta("weight", "seven").effective_weight(), 3);
    }

    #[test]
    fn ipv6_authority_is_bracketed() {
        assert_eq!(Instance::new("s", "::1", 80).authority(), "[::1]:80");
        assert_eq!(
            Instance::new("s", "127.0.0.1", 80).authority(),
            "127.0.0.1:80"
        );
    }

    #[test]
    fn filter_matches_tags_meta_and_health() {
        let i = Instance::new("s", "h", 1)
            .with_tag("v1")
            .with_tag("api")
            .with_meta("region", "us-east-1")
            .with_health(HealthStatus::Healthy);
        assert!(Filter::new().matches(&i));
        assert!(Filter::new().tag("v1").tag("api").matches(&i));
        assert!(!Filter::new().tag("v1").tag("production").matches(&i));
        assert!(Filter::new().meta("region", "us-east-1").matches(&i));
        assert!(!Filter::new().meta("region", "us-west-2").matches(&i));
        assert!(!Filter::new().meta("zone", "a").matches(&i));
        assert!(Filter::new().healthy_only().matches(&i));
        let sick = i.clone().with_health(HealthStatus::Unhealthy);
        assert!(!Filter::new().healthy_only().matches(&sick));
        assert!(Filter::new().matches(&sick));
        let unknown = i.with_health(HealthStatus::Unknown);
        assert!(Filter::new().healthy_only().matches(&unknown));
    }

    #[test]
    fn instance_json_round_trip_and_defaults() {
        let i = Instance::new("s", "h", 1).with_tag("t").with_meta("k", "v");
        let json = serde_json::to_string(&i).expect("serialize");
        assert_eq!(serde_json::from_str::<Instance>(&json).expect("parse"), i);
        let minimal: Instance =
            serde_json::from_str(r#"{"id":"a","name":"s","address":"h","port":1}"#).expect("parse");
        assert_eq!(minimal.weight, 1);
        assert_eq!(minimal.health, HealthStatus::Unknown);
    }

    fn arb_instance() -> impl Strategy<Value = Instance> {
        (
            proptest::collection::vec(prop_oneof!["a", "b", "c", "d"], 0..4),
            proptest::collection::btree_map(prop_oneof!["k1", "k2"], prop_oneof!["x", "y"], 0..3),
            prop_oneof![
                Just(HealthStatus::Healthy),
                Just(HealthStatus::Unhealthy),
                Just(HealthStatus::Unknown)
            ],
        )
            .prop_map(|(tags, meta, health)| Instance {
                tags,
                meta,
                health,
                ..Instance::new("s", "h", 1)
            })
    }

    fn arb_filter() -> impl Strategy<Value = Filter> {
        (
            proptest::collection::vec(prop_oneof!["a", "b", "c", "d"], 0..3),
            proptest::collection::btree_map(prop_oneof!["k1", "k2"], prop_oneof!["x", "y"], 0..2),
            any::<bool>(),
        )
            .prop_map(|(tags, meta, healthy_only)| Filter {
                tags,
                meta,
                healthy_only,
            })
    }

    proptest! {
        /// The filter is exactly the conjunction of its three rules, and `apply` keeps order.
        #[test]
        fn filter_is_conjunction(instances in proptest::collection::vec(arb_instance(), 0..20), f in arb_filter()) {
            let kept = f.apply(&instances);
            let expected: Vec<Instance> = instances.iter().filter(|i| {
                f.tags.iter().all(|t| i.tags.contains(t))
                    && f.meta.iter().all(|(k, v)| i.meta.get(k) == Some(v))
                    && (!f.healthy_only || i.health != HealthStatus::Unhealthy)
            }).cloned().collect();
            prop_assert_eq!(&kept, &expected);
            // Adding a requirement never widens the result.
            let narrower = f.clone().tag("a");
            prop_assert!(narrower.apply(&instances).len() <= kept.len());
        }
    }
}
