//! The registry blocks of the file: each enabled backend checked into its adapter's own config
//! type (defaults and `CHI_*` names are the adapters' constants), and the CLI's
//! `--registry` URL into the same [`Registries`].

use super::{Field, name_field, non_empty, positive_duration, raw};
use crate::error::{Error, Result};
use crate::instance::{CheckTarget, CheckedBy, ServiceConfig};
use crate::registry::chi::{self, AgentConfig};
use crate::registry::consul::{self, Consistency, ConsulConfig};
use crate::registry::etcd::{self, EtcdConfig};
use crate::registry::nacos::{self, NacosConfig, NacosServerConfig};
use crate::registry::zookeeper;
use crate::registry::{MemoryConfig, Registries};
use crate::secret::Secret;

impl Registries {
    /// Parses a registry URL as the CLI's `--registry` takes it: `memory`,
    /// `etcd://host:port[,host:port]`, `consul://host:port`, `nacos://host:port`,
    /// `zookeeper://host:port[,host:port][/root][?layout=curator|dubbo&watch=auto|persistent|oneshot]`,
    /// `chi://host:port` (the admin address of a running `chi agent`), or
    /// `dns://[SERVER[:PORT]]?srv=TEMPLATE` or `dns://[SERVER[:PORT]]?a=TEMPLATE&port=N` (see
    /// [`crate::registry::dns`]).
    /// Credentials come from the environment (`CHI_CONSUL_TOKEN`, `CHI_ETCD_USERNAME`,
    /// `CHI_ETCD_PASSWORD`, `CHI_NACOS_USERNAME`, `CHI_NACOS_PASSWORD`, `CHI_ZOOKEEPER_USERNAME`,
    /// `CHI_ZOOKEEPER_PASSWORD`), never from the URL.
    pub fn from_url(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Registries> {
        let field = Field("--registry".into());
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s, r.trim_end_matches('/')),
            None if url == "memory" => ("memory", ""),
            None => {
                return Err(field.err(format!(
                    "expected memory, etcd://host:port[,host:port], consul://host:port, nacos://host:port, zookeeper://host:port[,host:port][/root], chi://host:port or dns://[server]?srv=TEMPLATE, got {url:?}"
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
            "memory" => out.memory = Some(MemoryConfig::default()),
            "dns" => out.dns = Some(super::dns::from_url(rest)?),
            "consul" => {
                host_port(rest, &field)?;
                out.consul = Some(ConsulConfig {
                    address: rest.to_owned(),
                    token: env_secret(env, consul::ENV_TOKEN, None).unwrap_or_default(),
                    ..ConsulConfig::default()
                });
            }
            "etcd" => {
                let endpoints: Vec<String> = rest.split(',').map(str::to_owned).collect();
                for ep in &endpoints {
                    host_port(ep, &field)?;
                }
                out.etcd = Some(EtcdConfig {
                    endpoints,
                    username: env(etcd::ENV_USERNAME),
                    password: env_secret(env, etcd::ENV_PASSWORD, None),
                    ..EtcdConfig::default()
                });
            }
            "zookeeper" => {
                let at = zookeeper::At::new("--registry");
                out.zookeeper = Some(zookeeper::from_url(rest, &at, env)?);
            }
            "nacos" => {
                host_port(rest, &field)?;
                let (ip, port) = rest.rsplit_once(':').unwrap_or((rest, ""));
                out.nacos = Some(NacosConfig {
                    server_configs: vec![NacosServerConfig::new(
                        ip,
                        port.parse().unwrap_or(nacos::DEFAULT_PORT),
                    )],
                    namespace_id: nacos::DEFAULT_NAMESPACE.into(),
                    username: env(nacos::ENV_USERNAME),
                    password: env_secret(env, nacos::ENV_PASSWORD, None),
                    ..NacosConfig::default()
                });
            }
            "chi" => {
                host_port(rest, &field)?;
                if rest.contains('/') {
                    return Err(field.err(format!(
                        "expected chi://host:port (the admin address a `chi agent` prints), got {url:?}"
                    )));
                }
                out.chi = Some(AgentConfig::new(rest));
            }
            other => {
                return Err(field.err(format!(
                    "unknown registry scheme {other:?}, expected memory, etcd, consul, nacos, zookeeper, chi or dns"
                )));
            }
        }
        Ok(out)
    }
}

/// When the registration's TTL check gave Consul its check TTL, checks the Consul block by the
/// adapter's rules now, so that a TTL it refuses is reported at `registration.health_check.ttl`,
/// where the user wrote it (the rest is checked when the registry is built, as for the other
/// backends).
pub(super) fn validate_consul(
    registries: &Registries,
    registration: Option<&ServiceConfig>,
    sd: &Field,
) -> Result<()> {
    let Some(c) = &registries.consul else {
        return Ok(());
    };
    let from_registration = registration
        .and_then(|r| r.health_check.as_ref())
        .is_some_and(|h| h.target == CheckTarget::Ttl);
    if !from_registration {
        return Ok(());
    }
    c.validate().map_err(|e| match e {
        Error::Config { field, message } if field == format!("{}.check_ttl", consul::FIELD) => sd
            .join("registration")
            .join("health_check")
            .join("ttl")
            .err(message),
        other => other,
    })
}

/// `checked_by: registry` needs every enabled registry to run the check itself, and only Consul
/// does: refused here, at the field, rather than when the service registers.
pub(super) fn validate_checked_by(
    registries: &Registries,
    registration: Option<&ServiceConfig>,
    sd: &Field,
) -> Result<()> {
    let Some(check) = registration.and_then(|r| r.health_check.as_ref()) else {
        return Ok(());
    };
    if check.checked_by != CheckedBy::Registry || !check.is_active() {
        return Ok(());
    }
    let mut enabled = registries.writable();
    if enabled.is_empty() {
        enabled.push("memory");
    }
    match enabled.iter().find(|b| **b != "consul") {
        None => Ok(()),
        Some(backend) => Err(sd
            .join("registration")
            .join("health_check")
            .join("checked_by")
            .err(format!(
                "\"registry\" needs a registry that runs health checks, but {backend} cannot \
                 (only Consul runs them); expected \"auto\" or \"chi\" (chi probes and gates \
                 the {backend} registration on the result)"
            ))),
    }
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

pub(super) fn registries(
    r: raw::Registries,
    at: &Field,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Registries> {
    let mut out = Registries::default();
    if let Some(c) = r.consul.filter(|c| c.enabled) {
        let p = at.join("consul");
        let address = non_empty(c.address).unwrap_or_else(|| consul::DEFAULT_ADDRESS.into());
        host_port(&address, &p.join("address"))?;
        let consistency = match c.consistency.as_deref() {
            Some(value) => value.parse().map_err(|e| match e {
                Error::Config { message, .. } => p.join("consistency").err(message),
                other => other,
            })?,
            None => Consistency::Default,
        };
        out.consul = Some(ConsulConfig {
            address,
            token: env_secret(env, consul::ENV_TOKEN, c.token).unwrap_or_default(),
            datacenter: non_empty(c.datacenter),
            consistency,
            ..ConsulConfig::default()
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
        let defaults = EtcdConfig::default();
        let lease_ttl = e
            .lease_ttl
            .as_deref()
            .map(|v| positive_duration(v, &p.join("lease_ttl")))
            .transpose()?
            .unwrap_or(defaults.lease_ttl);
        out.etcd = Some(EtcdConfig {
            endpoints: e.endpoints,
            username: env(etcd::ENV_USERNAME).or(non_empty(e.username)),
            password: env_secret(env, etcd::ENV_PASSWORD, e.password),
            prefix: e.prefix.unwrap_or(defaults.prefix),
            lease_ttl,
            ..defaults
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
            servers.push(NacosServerConfig {
                ip,
                port,
                context_path: non_empty(s.context_path)
                    .unwrap_or_else(|| nacos::DEFAULT_CONTEXT_PATH.into()),
            });
        }
        let client = n.client_config.unwrap_or_default();
        let cp = p.join("client_config");
        let namespace_id =
            non_empty(client.namespace_id).unwrap_or_else(|| nacos::DEFAULT_NAMESPACE.into());
        name_field("namespace id", &namespace_id, &cp.join("namespace_id"))?;
        let group_name =
            non_empty(client.group_name).unwrap_or_else(|| nacos::DEFAULT_GROUP.into());
        name_field("group name", &group_name, &cp.join("group_name"))?;
        out.nacos = Some(NacosConfig {
            server_configs: servers,
            namespace_id,
            username: env(nacos::ENV_USERNAME).or(non_empty(client.username)),
            password: env_secret(env, nacos::ENV_PASSWORD, client.password),
            group_name,
            cluster_name: non_empty(client.cluster_name)
                .unwrap_or_else(|| nacos::DEFAULT_CLUSTER.into()),
            ..NacosConfig::default()
        });
    }
    if let Some(c) = r.chi.filter(|c| c.enabled) {
        let address = non_empty(c.address).unwrap_or_else(|| chi::DEFAULT_ADDRESS.into());
        host_port(&address, &at.join("chi").join("address"))?;
        let config = AgentConfig::new(address);
        config.validate()?;
        out.chi = Some(config);
    }
    if let Some(d) = r.dns.filter(|d| d.enabled) {
        out.dns = Some(super::dns::block(d, &at.join("dns"))?);
    }
    let memory_enabled = r.memory.as_ref().is_some_and(|m| m.enabled);
    if let Some(z) = r.zookeeper {
        out.zookeeper = z.validate(env)?;
    }
    let nothing_else = out.consul.is_none()
        && out.etcd.is_none()
        && out.nacos.is_none()
        && out.zookeeper.is_none()
        && out.chi.is_none()
        && out.dns.is_none();
    if memory_enabled || nothing_else {
        let ttl = r
            .memory
            .and_then(|m| m.ttl)
            .map(|v| positive_duration(&v, &at.join("memory").join("ttl")))
            .transpose()?;
        out.memory = Some(MemoryConfig { ttl });
    }
    Ok(out)
}
