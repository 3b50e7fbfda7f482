//! The data model: what a service instance is, how it is registered, and how it is filtered.
//!
//! [`Instance`] is what discovery returns and balancers pick from; [`ServiceConfig`] is what a
//! service registers (it becomes an `Instance` with [`ServiceConfig::instance`]); [`Filter`] is the
//! Go sketch's tag / meta / health filter. All of them are plain data with serde, so every backend can
//! store them as JSON and the CLI can print them.
//!
//! Beside them: `validate`, what makes an instance and its names acceptable to every registry;
//! `check`, the active health checks a registration asks for.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod check;
mod validate;

pub use check::{CheckTarget, CheckedBy, HealthCheck};
pub use validate::is_valid_name;
pub(crate) use validate::validate_name;

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
}

/// The id chi derives when none is given: `name-address-port`.
pub fn default_id(name: &str, address: &str, port: u16) -> String {
    format!("{name}-{address}-{port}")
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
mod tests;
