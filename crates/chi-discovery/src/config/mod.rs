//! `chi-config.yaml`: read raw, then validated into typed values.
//!
//! Loading happens in two steps (as ripgrep turns low-level args into high-level ones):
//! [`raw`] mirrors the YAML with `deny_unknown_fields`, and [`Config::from_raw`] turns it into
//! durations, non-zero numbers and enums. Every error is an [`Error::Config`] whose `field` is the
//! YAML path and whose message has the bad value and what was expected:
//!
//! ```text
//! service_discovery.discovery.cache.ttl: invalid duration "30x", expected a duration such as "30s", "500ms" or "1m"
//! ```
//!
//! Secrets can come from the environment instead of the file, and the environment wins:
//! `CHI_CONSUL_TOKEN`, `CHI_ETCD_USERNAME`, `CHI_ETCD_PASSWORD`, `CHI_NACOS_USERNAME`,
//! `CHI_NACOS_PASSWORD`, `CHI_ZOOKEEPER_USERNAME`, `CHI_ZOOKEEPER_PASSWORD` (each adapter's
//! `ENV_*` constants).
//!
//! Every section is optional; what is missing takes the defaults (the adapters' own, for the
//! registries). With no registry enabled the embedded one is used.
//!
//! The registries come out as each adapter's own config type in a [`Registries`]; connecting
//! them is the registry side's job ([`Registries::connect`], [`crate::registry::connect()`]), so
//! this module parses and checks only. `raw` mirrors the file, `validate` checks the general
//! sections, `registries` the registry blocks (`dns` the DNS block and URL).

mod dns;
pub mod raw;
mod registries;
mod validate;

use std::path::Path;
use std::time::Duration;

use crate::balance::{ConsistentHashConfig, Strategy};
use crate::discovery::{CacheConfig, OutagePolicy};
use crate::error::{Error, Result};
use crate::instance::{ServiceConfig, validate_name};
use crate::retry::RetryPolicy;

pub use crate::registry::{MemoryConfig, Registries};

/// Routing's settings live with the routers; named here too, beside the other sections.
pub use crate::routing::RoutingConfig;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The service this process registers (`registration`), if any.
    pub registration: Option<ServiceConfig>,
    /// Registry backends (`registries`).
    pub registries: Registries,
    /// Discovery cache (`discovery.cache`).
    pub cache: CacheConfig,
    /// Retries of registry calls (`discovery.retry`).
    pub retry: RetryPolicy,
    /// What discovery believes of a registry back from an outage: its restart grace
    /// (`discovery.restart_grace`, default `0s`: off).
    pub outage: OutagePolicy,
    /// Balancer (`load_balancer`).
    pub load_balancer: LoadBalancerConfig,
    /// Routing (`routing`).
    pub routing: RoutingConfig,
    /// Metrics (`metrics`).
    pub metrics: MetricsConfig,
}

/// `metrics`: how the Prometheus metrics are labelled (the metrics themselves need the
/// `metrics` feature; `Chi::metrics` and `chi proxy` read this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Label selections and registration state by instance id (the Go sketch's `instance`
    /// label; `per_instance_labels`). Default `true`; turn it off for large fleets, where the
    /// series would grow with the instances: the counts are then summed per service.
    pub per_instance_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            per_instance_labels: true,
        }
    }
}

/// `load_balancer`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancerConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// Skip instances that are not healthy.
    pub health_check_enabled: bool,
    /// Consistent-hash settings.
    pub consistent_hash: ConsistentHashConfig,
    /// Zone-aware balancing (`zone_aware`).
    pub zone_aware: crate::routing::ZoneAwareConfig,
    /// Circuit breaking: requests in flight per instance (`circuit_breaker.max_requests`).
    pub max_requests_per_instance: Option<u32>,
    /// Deterministic subsetting: instances per client (`subset_size`); the clients are this
    /// service's instances, so it needs `registration`.
    pub subset_size: Option<usize>,
    /// Slow start (`slow_start`).
    pub slow_start: Option<crate::routing::SlowStartConfig>,
    /// The request header whose value is the key of the hashing strategies
    /// (`hash_key_header`, default `X-Hash-Key`): read by [`Chi::http`](crate::Chi::http), the
    /// tower service of a [`Chi`](crate::Chi) and `chi proxy`. Stored lowercase.
    pub hash_key_header: http::HeaderName,
    /// Settings of `orca_weighted_round_robin` (`orca`).
    pub orca: crate::balance::OrcaConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registration: None,
            registries: Registries {
                memory: Some(MemoryConfig::default()),
                ..Registries::default()
            },
            cache: CacheConfig::default(),
            retry: RetryPolicy::default(),
            outage: OutagePolicy::default(),
            load_balancer: LoadBalancerConfig {
                strategy: Strategy::default(),
                health_check_enabled: true,
                consistent_hash: ConsistentHashConfig::default(),
                zone_aware: crate::routing::ZoneAwareConfig::default(),
                max_requests_per_instance: None,
                subset_size: None,
                slow_start: None,
                hash_key_header: http::HeaderName::from_static(crate::routing::HASH_KEY_HEADER),
                orca: crate::balance::OrcaConfig::default(),
            },
            routing: RoutingConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a config file, with secrets from the process environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                path.display().to_string(),
                format!("cannot read the file: {e}"),
            )
        })?;
        Self::from_yaml_with_env(&text, |k| std::env::var(k).ok())
    }

    /// Parses and validates YAML, with secrets from the process environment.
    pub fn from_yaml(text: &str) -> Result<Config> {
        Self::from_yaml_with_env(text, |k| std::env::var(k).ok())
    }

    /// Parses and validates YAML; `env` answers environment lookups (tests pass a map).
    pub fn from_yaml_with_env(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let raw = parse(text)?;
        Self::from_raw(raw, &env)
    }

    /// Validates the raw mirror.
    pub fn from_raw(raw: raw::File, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let sd = raw.service_discovery.unwrap_or_default();
        let p = Field("service_discovery".into());
        let registration = sd
            .registration
            .map(|r| validate::registration(r, &p.join("registration")))
            .transpose()?;
        let mut registries = registries::registries(
            sd.registries.unwrap_or_default(),
            &p.join("registries"),
            env,
        )?;
        registries.apply_registration(registration.as_ref());
        registries::validate_consul(&registries, registration.as_ref(), &p)?;
        registries::validate_checked_by(&registries, registration.as_ref(), &p)?;
        dns::validate_registration(&registries, registration.as_ref(), &p)?;
        let disc = sd.discovery.unwrap_or_default();
        let dp = p.join("discovery");
        let cache = validate::cache(
            disc.cache.unwrap_or_default(),
            &dp.join("cache"),
            &registries,
        )?;
        let retry = validate::retry(disc.retry.unwrap_or_default(), &dp.join("retry"))?;
        let restart_grace = disc
            .restart_grace
            .map(|v| duration(&v, &dp.join("restart_grace")))
            .transpose()?;
        let outage = OutagePolicy::with_restart_grace(restart_grace.unwrap_or_default());
        let load_balancer = validate::load_balancer(
            sd.load_balancer.unwrap_or_default(),
            &p.join("load_balancer"),
        )?;
        let routing = validate::routing(sd.routing.unwrap_or_default(), &p.join("routing"))?;
        let metrics = sd.metrics.unwrap_or_default();
        let metrics = MetricsConfig {
            per_instance_labels: metrics.per_instance_labels.unwrap_or(true),
        };
        if load_balancer.subset_size.is_some() && registration.is_none() {
            return Err(p.join("load_balancer").join("subset_size").err(
                "needs service_discovery.registration: the clients that share the subsets are \
                 the instances of this service",
            ));
        }
        Ok(Config {
            registration,
            registries,
            cache,
            retry,
            outage,
            load_balancer,
            routing,
            metrics,
        })
    }
}

/// YAML -> raw mirror, with the YAML path in every error.
pub fn parse(text: &str) -> Result<raw::File> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "config".to_owned()
        } else {
            path
        };
        Error::config(field, e.into_inner().to_string())
    })
}

/// A dotted YAML path under construction, e.g. `service_discovery.discovery.cache.ttl`.
#[derive(Clone)]
pub(crate) struct Field(String);

impl Field {
    pub(crate) fn join(&self, key: &str) -> Field {
        Field(format!("{}.{key}", self.0))
    }
    pub(crate) fn index(&self, i: usize) -> Field {
        Field(format!("{}[{i}]", self.0))
    }
    /// A map key that is no plain name (`client_regions["10.1.0.0/16"]`).
    pub(crate) fn key(&self, key: &str) -> Field {
        Field(format!("{}[{key:?}]", self.0))
    }
    pub(crate) fn err(&self, message: impl Into<String>) -> Error {
        Error::config(self.0.clone(), message)
    }
}

pub(crate) fn duration(value: &str, at: &Field) -> Result<Duration> {
    humantime::parse_duration(value.trim()).map_err(|_| {
        at.err(format!(
            "invalid duration {value:?}, expected a duration such as \"30s\", \"500ms\" or \"1m\""
        ))
    })
}

pub(crate) fn positive_duration(value: &str, at: &Field) -> Result<Duration> {
    let d = duration(value, at)?;
    if d.is_zero() {
        return Err(at.err(format!("must be greater than zero, got {value:?}")));
    }
    Ok(d)
}

pub(crate) fn opt_duration(value: Option<&str>, at: &Field, default: Duration) -> Result<Duration> {
    value.map_or(Ok(default), |v| positive_duration(v, at))
}

pub(crate) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

pub(crate) fn name_field(what: &'static str, value: &str, at: &Field) -> Result<()> {
    validate_name(what, value).map_err(|e| match e {
        Error::Invalid { reason, .. } => at.err(format!("{reason}, got {value:?}")),
        other => other,
    })
}

#[cfg(test)]
mod tests;
