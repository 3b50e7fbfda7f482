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
//! `CHI_NACOS_PASSWORD`, `CHI_ZOOKEEPER_USERNAME`, `CHI_ZOOKEEPER_PASSWORD`, `CHI_AGENT_TOKEN`
//! (each adapter's `ENV_*` constants), and `chi agent`'s own `CHI_AGENT_READ_TOKEN` and
//! `CHI_AGENT_WRITE_TOKEN` ([`AgentSettings`]).
//!
//! Every section is optional; what is missing takes the defaults (the adapters' own, for the
//! registries). With no registry enabled the embedded one is used.
//!
//! The registries come out as each adapter's own config type in a [`Registries`]; connecting
//! them is the registry side's job ([`Registries::connect`], [`crate::registry::connect()`]), so
//! this module parses and checks only. `raw` mirrors the file, `validate` checks the general
//! sections, `registries` the registry blocks (`dns` the DNS block and URL).

mod agent;
mod depth;
mod dns;
pub mod raw;
mod registries;
mod validate;

use std::path::Path;
use std::time::Duration;

use crate::discovery::{CacheConfig, OutagePolicy};
use crate::error::{Error, Result};
use crate::instance::{ServiceConfig, validate_name};
use crate::retry::RetryPolicy;
use crate::routing::Routers;

pub use crate::registry::{MemoryConfig, Registries};
pub use agent::{AgentSettings, ENV_READ_TOKEN, ENV_WRITE_TOKEN, ServerTls, WriteScope};
pub use depth::MAX_DEPTH;

/// The balancer's and routing's settings live with the routers that read them; named here too,
/// beside the other sections.
pub use crate::routing::{LoadBalancerConfig, RoutingConfig};

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
    /// Who may use `chi agent`'s registry API (`agent`).
    pub agent: AgentSettings,
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
            load_balancer: LoadBalancerConfig::default(),
            routing: RoutingConfig::default(),
            metrics: MetricsConfig::default(),
            agent: AgentSettings::default(),
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
        let agent = agent::settings(sd.agent.unwrap_or_default(), &p.join("agent"), env)?;
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
            agent,
        })
    }
}

impl Config {
    /// The routers of this file's `load_balancer` and `routing` sections ([`Routers::new`]),
    /// dealing subsets, when `subset_size` asks for them, as the instance of `registration`.
    pub fn routers(&self) -> Result<Routers> {
        let me = self.registration.as_ref().map(ServiceConfig::instance_id);
        Routers::new(&self.load_balancer, &self.routing, me.as_deref())
    }
}

/// YAML -> raw mirror, with the YAML path in every error. A file nesting deeper than
/// [`MAX_DEPTH`] is refused before parsing (see `depth`).
pub fn parse(text: &str) -> Result<raw::File> {
    depth::check(text)?;
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

/// The longest duration any field of the file takes. Every duration of chi's config (TTLs,
/// intervals, timeouts, backoffs, windows) is seconds to hours; a longer one is a mistake, and
/// one near `u64::MAX` seconds would overflow the clock arithmetic it feeds.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Why `d` (written `value`) is too long, when it is longer than [`MAX_DURATION`].
pub(crate) fn too_long(d: Duration, value: &str) -> Option<String> {
    (d > MAX_DURATION).then(|| format!("must be at most 1 day (24h), got {:?}", value.trim()))
}

pub(crate) fn duration(value: &str, at: &Field) -> Result<Duration> {
    let d = humantime::parse_duration(value.trim()).map_err(|_| {
        at.err(format!(
            "invalid duration {value:?}, expected a duration such as \"30s\", \"500ms\" or \"1m\" (at most 1 day)"
        ))
    })?;
    match too_long(d, value) {
        Some(message) => Err(at.err(message)),
        None => Ok(d),
    }
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
