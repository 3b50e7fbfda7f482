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
//! `CHI_NACOS_PASSWORD`.
//!
//! Every section is optional; what is missing takes the spec's defaults. With no registry enabled
//! the embedded one is used.

pub mod raw;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::{ConsistentHashConfig, Strategy};
use crate::discovery::CacheConfig;
use crate::error::{Error, Result};
use crate::instance::{CheckTarget, HealthCheck, ServiceConfig, validate_name};
use crate::registry::{Memory, MultiRegistry, Registry};
use crate::retry::RetryPolicy;
use crate::secret::Secret;

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
    /// Balancer (`load_balancer`).
    pub load_balancer: LoadBalancerConfig,
    /// Routing (`routing`).
    pub routing: RoutingConfig,
}

/// The enabled registry backends. Several enabled: chi writes to all (a multi-registry).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registries {
    /// The embedded registry: used when enabled, or when nothing else is.
    pub memory: Option<MemorySettings>,
    /// Consul, when enabled.
    pub consul: Option<ConsulSettings>,
    /// etcd, when enabled.
    pub etcd: Option<EtcdSettings>,
    /// Nacos, when enabled.
    pub nacos: Option<NacosSettings>,
}

impl Registries {
    /// Names of the enabled backends, in write order (`consul`, `etcd`, `nacos`, `memory`).
    pub fn enabled(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.consul.is_some() {
            v.push("consul");
        }
        if self.etcd.is_some() {
            v.push("etcd");
        }
        if self.nacos.is_some() {
            v.push("nacos");
        }
        if self.memory.is_some() {
            v.push("memory");
        }
        v
    }
}

impl Registries {
    /// Parses a registry URL as the CLI's `--registry` takes it: `memory`,
    /// `etcd://host:port[,host:port]`, `consul://host:port`, `nacos://host:port`. Credentials come
    /// from the environment (`CHI_CONSUL_TOKEN`, `CHI_ETCD_USERNAME`, `CHI_ETCD_PASSWORD`,
    /// `CHI_NACOS_USERNAME`, `CHI_NACOS_PASSWORD`), never from the URL.
    pub fn from_url(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Registries> {
        let field = Field("--registry".into());
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r.trim_end_matches('/')),
            None if url == "memory" => ("memory", ""),
            None => {
                return Err(field.err(format!(
                    "expected memory, etcd://host:port[,host:port], consul://host:port or nacos://host:port, got {url:?}"
                )));
            }
        };
        if rest.contains('@') {
            return Err(field.err(
                "credentials in the URL would show in `ps`; set CHI_CONSUL_TOKEN, CHI_ETCD_PASSWORD or CHI_NACOS_PASSWORD instead",
            ));
        }
        let mut out = Registries::default();
        match scheme {
            "memory" => out.memory = Some(MemorySettings::default()),
            "consul" => {
                host_port(rest, &field)?;
                out.consul = Some(ConsulSettings {
                    address: rest.to_owned(),
                    token: env_secret(env, "CHI_CONSUL_TOKEN", None).unwrap_or_default(),
                    datacenter: None,
                    check_ttl: None,
                });
            }
            "etcd" => {
                let endpoints: Vec<String> = rest.split(',').map(str::to_owned).collect();
                for ep in &endpoints {
                    host_port(ep, &field)?;
                }
                out.etcd = Some(EtcdSettings {
                    endpoints,
                    username: env("CHI_ETCD_USERNAME"),
                    password: env_secret(env, "CHI_ETCD_PASSWORD", None),
                    prefix: None,
                    lease_ttl: None,
                });
            }
            "nacos" => {
                host_port(rest, &field)?;
                let (ip, port) = rest.rsplit_once(':').unwrap_or((rest, "8848"));
                out.nacos = Some(NacosSettings {
                    servers: vec![NacosServer {
                        ip: ip.to_owned(),
                        port: port.parse().unwrap_or(8848),
                        context_path: "/nacos".into(),
                    }],
                    namespace_id: "public".into(),
                    username: env("CHI_NACOS_USERNAME"),
                    password: env_secret(env, "CHI_NACOS_PASSWORD", None),
                    group_name: "DEFAULT_GROUP".into(),
                    cluster_name: "DEFAULT".into(),
                });
            }
            other => {
                return Err(field.err(format!(
                    "unknown registry scheme {other:?}, expected memory, etcd, consul or nacos"
                )));
            }
        }
        Ok(out)
    }

    /// Connects to the enabled backends: one registry, or a
    /// [`MultiRegistry`] over several (in write order).
    pub async fn connect(&self) -> Result<Arc<dyn Registry>> {
        let mut members: Vec<Arc<dyn Registry>> = Vec::new();
        if let Some(c) = &self.consul {
            members.push(connect_consul(c).await?);
        }
        if let Some(e) = &self.etcd {
            members.push(connect_etcd(e).await?);
        }
        if let Some(n) = &self.nacos {
            members.push(connect_nacos(n).await?);
        }
        if let Some(m) = &self.memory {
            members.push(Arc::new(match m.ttl {
                Some(ttl) => Memory::with_ttl(ttl),
                None => Memory::new(),
            }));
        }
        match members.len() {
            0 => Ok(Arc::new(Memory::new())),
            1 => Ok(members.remove(0)),
            _ => Ok(Arc::new(MultiRegistry::new(members))),
        }
    }
}

#[cfg(not(all(feature = "consul", feature = "etcd", feature = "nacos")))]
fn feature_missing(backend: &str) -> Error {
    Error::config(
        format!("service_discovery.registries.{backend}"),
        format!(
            "chi was built without the `{backend}` feature; rebuild with `--features {backend}`"
        ),
    )
}

#[cfg(not(feature = "consul"))]
async fn connect_consul(_: &ConsulSettings) -> Result<Arc<dyn Registry>> {
    Err(feature_missing("consul"))
}

#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_: &EtcdSettings) -> Result<Arc<dyn Registry>> {
    Err(feature_missing("etcd"))
}

#[cfg(not(feature = "nacos"))]
async fn connect_nacos(_: &NacosSettings) -> Result<Arc<dyn Registry>> {
    Err(feature_missing("nacos"))
}

#[cfg(feature = "consul")]
async fn connect_consul(c: &ConsulSettings) -> Result<Arc<dyn Registry>> {
    use crate::registry::consul::{Consul, ConsulConfig};
    Ok(Arc::new(Consul::new(ConsulConfig {
        address: c.address.clone(),
        token: c.token.clone(),
        datacenter: c.datacenter.clone(),
        check_ttl: c.check_ttl.unwrap_or(ConsulConfig::default().check_ttl),
        ..ConsulConfig::default()
    })?))
}

#[cfg(feature = "etcd")]
async fn connect_etcd(e: &EtcdSettings) -> Result<Arc<dyn Registry>> {
    use crate::registry::etcd::{Etcd, EtcdConfig};
    let defaults = EtcdConfig::default();
    Ok(Arc::new(
        Etcd::connect(EtcdConfig {
            endpoints: e.endpoints.clone(),
            username: e.username.clone(),
            password: e.password.clone(),
            prefix: e.prefix.clone().unwrap_or(defaults.prefix),
            lease_ttl: e.lease_ttl.unwrap_or(defaults.lease_ttl),
            ..EtcdConfig::default()
        })
        .await?,
    ))
}

#[cfg(feature = "nacos")]
async fn connect_nacos(n: &NacosSettings) -> Result<Arc<dyn Registry>> {
    use crate::registry::nacos::{Nacos, NacosConfig, NacosServerConfig};
    Ok(Arc::new(
        Nacos::connect(NacosConfig {
            server_configs: n
                .servers
                .iter()
                .map(|s| NacosServerConfig {
                    ip: s.ip.clone(),
                    port: s.port,
                    context_path: s.context_path.clone(),
                })
                .collect(),
            namespace_id: n.namespace_id.clone(),
            username: n.username.clone(),
            password: n.password.clone(),
            group_name: n.group_name.clone(),
            cluster_name: n.cluster_name.clone(),
            ..NacosConfig::default()
        })
        .await?,
    ))
}

/// `registries.memory`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemorySettings {
    /// Registrations expire this long after their last keep-alive (`None`: never).
    pub ttl: Option<Duration>,
}

/// `registries.consul`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulSettings {
    /// `host:port` or URL of the agent's HTTP API.
    pub address: String,
    /// ACL token (`CHI_CONSUL_TOKEN` overrides).
    pub token: Secret,
    /// Datacenter (`None`: the agent's).
    pub datacenter: Option<String>,
    /// TTL of chi's keep-alive check: the registration's `health_check.ttl` when it has one
    /// (`None`: the adapter's default, 15 s).
    pub check_ttl: Option<Duration>,
}

impl Registries {
    /// Gives Consul the TTL of `registration`'s TTL health check, if it has one: that is the
    /// TTL of chi's keep-alive check there.
    pub fn apply_registration(&mut self, registration: Option<&ServiceConfig>) {
        if let (Some(c), Some(check)) = (
            self.consul.as_mut(),
            registration.and_then(|r| r.health_check.as_ref()),
        ) && check.target == CheckTarget::Ttl
        {
            c.check_ttl = Some(check.interval);
        }
    }
}

/// `registries.etcd`.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    /// `host:port` endpoints of the cluster.
    pub endpoints: Vec<String>,
    /// User (`CHI_ETCD_USERNAME` overrides).
    pub username: Option<String>,
    /// Password (`CHI_ETCD_PASSWORD` overrides).
    pub password: Option<Secret>,
    /// Key prefix (`None`: the adapter's default).
    pub prefix: Option<String>,
    /// Lease TTL (`None`: the adapter's default).
    pub lease_ttl: Option<Duration>,
}

/// `registries.nacos`.
#[derive(Debug, Clone, PartialEq)]
pub struct NacosSettings {
    /// Servers.
    pub servers: Vec<NacosServer>,
    /// Namespace id (`public` when empty).
    pub namespace_id: String,
    /// User (`CHI_NACOS_USERNAME` overrides).
    pub username: Option<String>,
    /// Password (`CHI_NACOS_PASSWORD` overrides).
    pub password: Option<Secret>,
    /// Group (`DEFAULT_GROUP`).
    pub group_name: String,
    /// Cluster (`DEFAULT`).
    pub cluster_name: String,
}

/// One Nacos server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosServer {
    /// Address.
    pub ip: String,
    /// HTTP port (the gRPC port is this + 1000).
    pub port: u16,
    /// Context path (`/nacos`).
    pub context_path: String,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registration: None,
            registries: Registries {
                memory: Some(MemorySettings::default()),
                ..Registries::default()
            },
            cache: CacheConfig::default(),
            retry: RetryPolicy::default(),
            load_balancer: LoadBalancerConfig {
                strategy: Strategy::default(),
                health_check_enabled: true,
                consistent_hash: ConsistentHashConfig::default(),
            },
            routing: RoutingConfig::default(),
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
            .map(|r| registration(r, &p.join("registration")))
            .transpose()?;
        let mut registries = registries(
            sd.registries.unwrap_or_default(),
            &p.join("registries"),
            env,
        )?;
        registries.apply_registration(registration.as_ref());
        let disc = sd.discovery.unwrap_or_default();
        let dp = p.join("discovery");
        let cache = cache(disc.cache.unwrap_or_default(), &dp.join("cache"))?;
        let retry = retry(disc.retry.unwrap_or_default(), &dp.join("retry"))?;
        let load_balancer = load_balancer(
            sd.load_balancer.unwrap_or_default(),
            &p.join("load_balancer"),
        )?;
        let routing = routing(sd.routing.unwrap_or_default(), &p.join("routing"))?;
        Ok(Config {
            registration,
            registries,
            cache,
            retry,
            load_balancer,
            routing,
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
struct Field(String);

impl Field {
    fn join(&self, key: &str) -> Field {
        Field(format!("{}.{key}", self.0))
    }
    fn index(&self, i: usize) -> Field {
        Field(format!("{}[{i}]", self.0))
    }
    fn err(&self, message: impl Into<String>) -> Error {
        Error::config(self.0.clone(), message)
    }
}

fn duration(value: &str, at: &Field) -> Result<Duration> {
    humantime::parse_duration(value.trim()).map_err(|_| {
        at.err(format!(
            "invalid duration {value:?}, expected a duration such as \"30s\", \"500ms\" or \"1m\""
        ))
    })
}

fn positive_duration(value: &str, at: &Field) -> Result<Duration> {
    let d = duration(value, at)?;
    if d.is_zero() {
        return Err(at.err(format!("must be greater than zero, got {value:?}")));
    }
    Ok(d)
}

fn opt_duration(value: Option<&str>, at: &Field, default: Duration) -> Result<Duration> {
    value.map_or(Ok(default), |v| positive_duration(v, at))
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

fn name_field(what: &'static str, value: &str, at: &Field) -> Result<()> {
    validate_name(what, value).map_err(|e| match e {
        Error::Invalid { reason, .. } => at.err(format!("{reason}, got {value:?}")),
        other => other,
    })
}

fn registration(r: raw::Registration, at: &Field) -> Result<ServiceConfig> {
    let name = r.name.ok_or_else(|| at.join("name").err("is required"))?;
    name_field("service name", &name, &at.join("name"))?;
    let address = r.address.filter(|a| !a.trim().is_empty()).ok_or_else(|| {
        at.join("address")
            .err("is required (the address other services use to reach this one)")
    })?;
    let port = r.port.ok_or_else(|| at.join("port").err("is required"))?;
    if port == 0 {
        return Err(at.join("port").err("must be between 1 and 65535, got 0"));
    }
    if let Some(id) = &r.id {
        name_field("instance id", id, &at.join("id"))?;
    }
    for (i, tag) in r.tags.iter().enumerate() {
        if tag.trim().is_empty() {
            return Err(at.join("tags").index(i).err("must not be empty"));
        }
    }
    let health_check = r
        .health_check
        .map(|h| health_check(h, &at.join("health_check")))
        .transpose()?;
    Ok(ServiceConfig {
        id: r.id,
        name,
        version: r.version.unwrap_or_default(),
        address,
        port,
        tags: r.tags,
        meta: r.meta,
        weight: r.weight.unwrap_or(crate::instance::DEFAULT_WEIGHT),
        health_check,
    })
}

fn health_check(h: raw::HealthCheck, at: &Field) -> Result<HealthCheck> {
    let mut targets = Vec::new();
    if let Some(v) = h.http {
        if v.trim().is_empty() {
            return Err(at
                .join("http")
                .err("must be a path such as \"/health\" or a URL, got \"\""));
        }
        if !v.starts_with('/') && !v.starts_with("http://") && !v.starts_with("https://") {
            return Err(at.join("http").err(format!(
                "must be a path starting with \"/\" or an http(s) URL, got {v:?}"
            )));
        }
        targets.push(CheckTarget::Http(v));
    }
    if let Some(v) = h.tcp {
        targets.push(CheckTarget::Tcp(v));
    }
    if let Some(v) = h.grpc {
        targets.push(CheckTarget::Grpc(v));
    }
    let mut ttl = None;
    if let Some(v) = &h.ttl {
        ttl = Some(positive_duration(v, &at.join("ttl"))?);
        targets.push(CheckTarget::Ttl);
    }
    let target = match targets.len() {
        1 => targets.remove(0),
        0 => return Err(at.err("needs one of http, tcp, grpc or ttl")),
        _ => return Err(at.err("takes only one of http, tcp, grpc or ttl, got several")),
    };
    let interval = match ttl {
        Some(t) => t,
        None => opt_duration(
            h.interval.as_deref(),
            &at.join("interval"),
            Duration::from_secs(10),
        )?,
    };
    let timeout = opt_duration(
        h.timeout.as_deref(),
        &at.join("timeout"),
        Duration::from_secs(3),
    )?;
    if target != CheckTarget::Ttl && timeout >= interval {
        return Err(at.join("timeout").err(format!(
            "must be shorter than the interval ({}), got {}",
            humantime::format_duration(interval),
            humantime::format_duration(timeout)
        )));
    }
    let deregister_critical_service_after = h
        .deregister_critical_service_after
        .as_deref()
        .map(|v| positive_duration(v, &at.join("deregister_critical_service_after")))
        .transpose()?;
    Ok(HealthCheck {
        target,
        interval,
        timeout,
        deregister_critical_service_after,
    })
}

fn host_port(value: &str, at: &Field) -> Result<()> {
    let v = value
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let ok = match v.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(at.err(format!(
            "expected host:port such as \"127.0.0.1:8500\", got {value:?}"
        )))
    }
}

fn env_secret(
    env: &dyn Fn(&str) -> Option<String>,
    key: &str,
    file: Option<Secret>,
) -> Option<Secret> {
    env(key)
        .map(Secret::from)
        .or(file)
        .filter(|s| !s.is_empty())
}

fn registries(
    r: raw::Registries,
    at: &Field,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Registries> {
    let mut out = Registries::default();
    if let Some(c) = r.consul.filter(|c| c.enabled) {
        let p = at.join("consul");
        let address = non_empty(c.address).unwrap_or_else(|| "127.0.0.1:8500".into());
        host_port(&address, &p.join("address"))?;
        out.consul = Some(ConsulSettings {
            address,
            token: env_secret(env, "CHI_CONSUL_TOKEN", c.token).unwrap_or_default(),
            datacenter: non_empty(c.datacenter),
            check_ttl: None,
        });
    }
    if let Some(e) = r.etcd.filter(|e| e.enabled) {
        let p = at.join("etcd");
        if e.endpoints.is_empty() {
            return Err(p
                .join("endpoints")
                .err("needs at least one host:port when etcd is enabled"));
        }
        for (i, ep) in e.endpoints.iter().enumerate() {
            host_port(ep, &p.join("endpoints").index(i))?;
        }
        if let Some(prefix) = &e.prefix
            && (!prefix.starts_with('/') || prefix.contains(".."))
        {
            return Err(p.join("prefix").err(format!(
                "must start with \"/\" and not contain \"..\", got {prefix:?}"
            )));
        }
        let lease_ttl = e
            .lease_ttl
            .as_deref()
            .map(|v| positive_duration(v, &p.join("lease_ttl")))
            .transpose()?;
        out.etcd = Some(EtcdSettings {
            endpoints: e.endpoints,
            username: env("CHI_ETCD_USERNAME").or(non_empty(e.username)),
            password: env_secret(env, "CHI_ETCD_PASSWORD", e.password),
            prefix: e.prefix,
            lease_ttl,
        });
    }
    if let Some(n) = r.nacos.filter(|n| n.enabled) {
        let p = at.join("nacos");
        if n.server_configs.is_empty() {
            return Err(p
                .join("server_configs")
                .err("needs at least one server when nacos is enabled"));
        }
        let mut servers = Vec::new();
        for (i, s) in n.server_configs.into_iter().enumerate() {
            let sp = p.join("server_configs").index(i);
            let ip = non_empty(s.ip).ok_or_else(|| sp.join("ip").err("is required"))?;
            let port = s.port.ok_or_else(|| sp.join("port").err("is required"))?;
            if port == 0 || port > 64535 {
                return Err(sp.join("port").err(format!(
                    "must be between 1 and 64535 (the gRPC port is port + 1000), got {port}"
                )));
            }
            servers.push(NacosServer {
                ip,
                port,
                context_path: non_empty(s.context_path).unwrap_or_else(|| "/nacos".into()),
            });
        }
        let client = n.client_config.unwrap_or_default();
        let cp = p.join("client_config");
        let namespace_id = non_empty(client.namespace_id).unwrap_or_else(|| "public".into());
        name_field("namespace id", &namespace_id, &cp.join("namespace_id"))?;
        let group_name = non_empty(client.group_name).unwrap_or_else(|| "DEFAULT_GROUP".into());
        name_field("group name", &group_name, &cp.join("group_name"))?;
        out.nacos = Some(NacosSettings {
            servers,
            namespace_id,
            username: env("CHI_NACOS_USERNAME").or(non_empty(client.username)),
            password: env_secret(env, "CHI_NACOS_PASSWORD", client.password),
            group_name,
            cluster_name: non_empty(client.cluster_name).unwrap_or_else(|| "DEFAULT".into()),
        });
    }
    let memory_enabled = r.memory.as_ref().is_some_and(|m| m.enabled);
    let nothing_else = out.consul.is_none() && out.etcd.is_none() && out.nacos.is_none();
    if memory_enabled || nothing_else {
        let ttl = r
            .memory
            .and_then(|m| m.ttl)
            .map(|v| positive_duration(&v, &at.join("memory").join("ttl")))
            .transpose()?;
        out.memory = Some(MemorySettings { ttl });
    }
    Ok(out)
}

fn cache(c: raw::Cache, at: &Field) -> Result<CacheConfig> {
    let d = CacheConfig::default();
    let ttl = opt_duration(c.ttl.as_deref(), &at.join("ttl"), d.ttl)?;
    let refresh_interval = opt_duration(
        c.refresh_interval.as_deref(),
        &at.join("refresh_interval"),
        d.refresh_interval,
    )?;
    if refresh_interval >= ttl {
        return Err(at.join("refresh_interval").err(format!(
            "must be shorter than cache.ttl ({}), got {}; otherwise every list goes stale between refreshes",
            humantime::format_duration(ttl),
            humantime::format_duration(refresh_interval)
        )));
    }
    let max_size = c.max_size.unwrap_or(d.max_size);
    if max_size == 0 {
        return Err(at.join("max_size").err("must be at least 1, got 0"));
    }
    Ok(CacheConfig {
        ttl,
        refresh_interval,
        max_size,
        enable_metrics: c.enable_metrics.unwrap_or(d.enable_metrics),
    })
}

fn retry(r: raw::Retry, at: &Field) -> Result<RetryPolicy> {
    let d = RetryPolicy::default();
    let max_attempts = r.max_attempts.unwrap_or(d.max_attempts);
    if max_attempts == 0 {
        return Err(at
            .join("max_attempts")
            .err("must be at least 1 (1 = no retry), got 0"));
    }
    let initial_interval = opt_duration(
        r.initial_interval.as_deref(),
        &at.join("initial_interval"),
        d.initial_interval,
    )?;
    let max_interval = opt_duration(
        r.max_interval.as_deref(),
        &at.join("max_interval"),
        d.max_interval,
    )?;
    if max_interval < initial_interval {
        return Err(at.join("max_interval").err(format!(
            "must not be shorter than initial_interval ({}), got {}",
            humantime::format_duration(initial_interval),
            humantime::format_duration(max_interval)
        )));
    }
    let multiplier = r.multiplier.unwrap_or(d.multiplier);
    if !(multiplier.is_finite() && multiplier >= 1.0) {
        return Err(at
            .join("multiplier")
            .err(format!("must be a number >= 1.0, got {multiplier}")));
    }
    Ok(RetryPolicy {
        max_attempts,
        initial_interval,
        max_interval,
        multiplier,
    })
}

fn load_balancer(l: raw::LoadBalancer, at: &Field) -> Result<LoadBalancerConfig> {
    let strategy = match l.strategy {
        None => Strategy::default(),
        Some(name) => name.parse::<Strategy>().map_err(|expected| {
            at.join("strategy")
                .err(format!("unknown strategy {name:?}: {expected}"))
        })?,
    };
    let ch = l.consistent_hash.unwrap_or_default();
    let cp = at.join("consistent_hash");
    let d = ConsistentHashConfig::default();
    let consistent_hash = ConsistentHashConfig {
        partition_count: ch.partition_count.unwrap_or(d.partition_count),
        replication_factor: ch.replication_factor.unwrap_or(d.replication_factor),
        load: ch.load.unwrap_or(d.load),
    };
    // One set of rules, the balancer's: its messages start with the field's name.
    consistent_hash
        .validate()
        .map_err(|m| match m.split_once(": ") {
            Some((field, message)) => cp.join(field).err(message),
            None => cp.err(m),
        })?;
    Ok(LoadBalancerConfig {
        strategy,
        health_check_enabled: l.health_check_enabled.unwrap_or(true),
        consistent_hash,
    })
}

fn routing(r: raw::Routing, at: &Field) -> Result<RoutingConfig> {
    let enable_version_routing = r.enable_version_routing.unwrap_or(false);
    let default_version = r.default_version.unwrap_or_default();
    if enable_version_routing && default_version.trim().is_empty() {
        return Err(at.join("default_version").err(
            "is required when enable_version_routing is true (the version of requests that name none)",
        ));
    }
    let mut zone_owner: HashMap<&str, &str> = HashMap::new();
    for (region, zones) in &r.regions {
        let rp = at.join("regions").join(region);
        if region.trim().is_empty() {
            return Err(at.join("regions").err("region names must not be empty"));
        }
        for (i, zone) in zones.iter().enumerate() {
            if zone.trim().is_empty() {
                return Err(rp.index(i).err("zone names must not be empty"));
            }
            if let Some(other) = zone_owner.insert(zone, region) {
                return Err(rp.index(i).err(format!(
                    "zone {zone:?} is already listed under region {other:?}; a zone belongs to one region"
                )));
            }
        }
    }
    let enable_geo_routing = r.enable_geo_routing.unwrap_or(false);
    Ok(RoutingConfig {
        enable_version_routing,
        enable_geo_routing,
        default_version,
        regions: r.regions,
    })
}

/// The effective values, one `path = value` line each, secrets redacted (`chi config check`).
pub fn describe(config: &Config) -> Vec<(String, String)> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let sd = "service_discovery";
    if let Some(r) = &config.registration {
        let p = format!("{sd}.registration");
        out.insert(format!("{p}.id"), r.instance_id());
        out.insert(format!("{p}.name"), r.name.clone());
        out.insert(format!("{p}.version"), r.version.clone());
        out.insert(format!("{p}.address"), format!("{}:{}", r.address, r.port));
        out.insert(format!("{p}.tags"), r.tags.join(","));
        out.insert(
            format!("{p}.meta"),
            r.meta
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.insert(format!("{p}.weight"), r.weight.to_string());
        if let Some(h) = &r.health_check {
            out.insert(
                format!("{p}.health_check"),
                format!(
                    "{:?} every {} (timeout {})",
                    h.target,
                    d(h.interval),
                    d(h.timeout)
                ),
            );
        }
    }
    out.insert(
        format!("{sd}.registries"),
        config.registries.enabled().join(","),
    );
    if let Some(c) = &config.registries.consul {
        out.insert(format!("{sd}.registries.consul.address"), c.address.clone());
        out.insert(
            format!("{sd}.registries.consul.token"),
            format!("{:?}", c.token),
        );
    }
    if let Some(e) = &config.registries.etcd {
        out.insert(
            format!("{sd}.registries.etcd.endpoints"),
            e.endpoints.join(","),
        );
        out.insert(
            format!("{sd}.registries.etcd.password"),
            format!("{:?}", e.password.clone().unwrap_or_default()),
        );
    }
    if let Some(n) = &config.registries.nacos {
        out.insert(
            format!("{sd}.registries.nacos.servers"),
            n.servers
                .iter()
                .map(|s| format!("{}:{}{}", s.ip, s.port, s.context_path))
                .collect::<Vec<_>>()
                .join(","),
        );
        out.insert(
            format!("{sd}.registries.nacos.namespace_id"),
            n.namespace_id.clone(),
        );
        out.insert(
            format!("{sd}.registries.nacos.password"),
            format!("{:?}", n.password.clone().unwrap_or_default()),
        );
    }
    let c = &config.cache;
    out.insert(format!("{sd}.discovery.cache.ttl"), d(c.ttl));
    out.insert(
        format!("{sd}.discovery.cache.refresh_interval"),
        d(c.refresh_interval),
    );
    out.insert(
        format!("{sd}.discovery.cache.max_size"),
        c.max_size.to_string(),
    );
    out.insert(
        format!("{sd}.discovery.cache.enable_metrics"),
        c.enable_metrics.to_string(),
    );
    let r = &config.retry;
    out.insert(
        format!("{sd}.discovery.retry.max_attempts"),
        r.max_attempts.to_string(),
    );
    out.insert(
        format!("{sd}.discovery.retry.initial_interval"),
        d(r.initial_interval),
    );
    out.insert(
        format!("{sd}.discovery.retry.max_interval"),
        d(r.max_interval),
    );
    out.insert(
        format!("{sd}.discovery.retry.multiplier"),
        r.multiplier.to_string(),
    );
    let l = &config.load_balancer;
    out.insert(
        format!("{sd}.load_balancer.strategy"),
        l.strategy.as_str().to_owned(),
    );
    out.insert(
        format!("{sd}.load_balancer.health_check_enabled"),
        l.health_check_enabled.to_string(),
    );
    out.insert(
        format!("{sd}.load_balancer.consistent_hash"),
        format!(
            "partition_count={} replication_factor={} load={}",
            l.consistent_hash.partition_count,
            l.consistent_hash.replication_factor,
            l.consistent_hash.load
        ),
    );
    let rt = &config.routing;
    out.insert(
        format!("{sd}.routing.enable_version_routing"),
        rt.enable_version_routing.to_string(),
    );
    out.insert(
        format!("{sd}.routing.enable_geo_routing"),
        rt.enable_geo_routing.to_string(),
    );
    out.insert(
        format!("{sd}.routing.default_version"),
        rt.default_version.clone(),
    );
    out.insert(
        format!("{sd}.routing.regions"),
        rt.regions
            .iter()
            .map(|(r, z)| format!("{r}=[{}]", z.join(",")))
            .collect::<Vec<_>>()
            .join(" "),
    );
    out.into_iter().collect()
}

#[cfg(test)]
mod tests;
