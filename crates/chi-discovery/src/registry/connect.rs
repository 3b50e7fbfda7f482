//! From the validated settings of every enabled backend to one [`Registry`].
//!
//! This is the registry side of the config file: [`crate::config`] parses and checks, and hands
//! over a [`Registries`] holding each adapter's own config type ([`ConsulConfig`],
//! [`EtcdConfig`], [`NacosConfig`], [`ZookeeperConfig`], [`AgentConfig`], [`MemoryConfig`]);
//! connecting them is done here, next to the adapters, so the parser needs none of the backends'
//! clients. A backend whose cargo feature is off is a config error naming its YAML path when it
//! is connected.

use std::sync::Arc;

use super::Registry;
use super::chi::AgentConfig;
use super::consul::ConsulConfig;
use super::dns::DnsConfig;
use super::etcd::EtcdConfig;
use super::memory::{Memory, MemoryConfig};
use super::multi::MultiRegistry;
use super::nacos::NacosConfig;
use super::pending;
use super::zookeeper::ZookeeperConfig;
use crate::error::Result;
use crate::instance::{CheckTarget, ServiceConfig};

/// The enabled registry backends. Several enabled: chi writes to all (a multi-registry).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registries {
    /// The embedded registry: used when enabled, or when nothing else is.
    pub memory: Option<MemoryConfig>,
    /// Consul, when enabled.
    pub consul: Option<ConsulConfig>,
    /// etcd, when enabled.
    pub etcd: Option<EtcdConfig>,
    /// Nacos, when enabled.
    pub nacos: Option<NacosConfig>,
    /// ZooKeeper, when enabled.
    pub zookeeper: Option<ZookeeperConfig>,
    /// A running `chi agent` (`chi://`), when enabled.
    pub chi: Option<AgentConfig>,
    /// DNS, when enabled: read-only, it serves discovery and takes no registration.
    pub dns: Option<DnsConfig>,
}

impl Registries {
    /// Names of the enabled backends, in write order (`consul`, `etcd`, `nacos`, `zookeeper`,
    /// `chi`,
    /// `memory`); `dns`, read-only, after the writable ones it is merged with.
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
        if self.zookeeper.is_some() {
            v.push("zookeeper");
        }
        if self.chi.is_some() {
            v.push("chi");
        }
        if self.memory.is_some() {
            v.push("memory");
        }
        if self.dns.is_some() {
            v.push("dns");
        }
        v
    }

    /// The enabled backends that take registrations: [`Registries::enabled`] without the
    /// read-only `dns`.
    pub fn writable(&self) -> Vec<&'static str> {
        let mut v = self.enabled();
        v.retain(|b| *b != "dns");
        v
    }

    /// A stable identity of the enabled registries, for telling which registry a stored list came
    /// from (the discovery cache's last-known-good file): the backends in write order with what
    /// selects their data (Consul's address and datacenter; etcd's endpoints and prefix; Nacos'
    /// servers, namespace, group and cluster; the agent's address). Never a secret: no token, password or user, and
    /// no `user:password@` part of a URL. Endpoints are sorted, so listing them in another order
    /// names the same registry.
    pub fn identity(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.consul {
            parts.push(format!(
                "consul(address={},datacenter={})",
                without_userinfo(c.address.trim()),
                c.datacenter.as_deref().unwrap_or_default().trim()
            ));
        }
        if let Some(e) = &self.etcd {
            let mut endpoints: Vec<String> = e
                .endpoints
                .iter()
                .map(|ep| without_userinfo(ep.trim()))
                .collect();
            endpoints.sort();
            parts.push(format!(
                "etcd(endpoints={},prefix={})",
                endpoints.join(","),
                e.prefix
            ));
        }
        if let Some(n) = &self.nacos {
            let mut servers: Vec<String> = n
                .server_configs
                .iter()
                .map(|s| format!("{}{}", s.authority(), s.context_path))
                .collect();
            servers.sort();
            parts.push(format!(
                "nacos(servers={},namespace={},group={},cluster={})",
                servers.join(","),
                n.namespace_id,
                n.group_name,
                n.cluster_name
            ));
        }
        if let Some(z) = &self.zookeeper {
            parts.push(super::zookeeper::identity(z));
        }
        if let Some(c) = &self.chi {
            parts.push(format!(
                "chi(address={})",
                without_userinfo(c.address.trim())
            ));
        }
        if self.memory.is_some() || (parts.is_empty() && self.dns.is_none()) {
            parts.push("memory".to_owned());
        }
        if let Some(d) = &self.dns {
            parts.push(d.identity());
        }
        parts.join("+")
    }

    /// Gives Consul the TTL of `registration`'s TTL health check, if it has one: that is the
    /// TTL of chi's keep-alive check there.
    pub fn apply_registration(&mut self, registration: Option<&ServiceConfig>) {
        if let (Some(c), Some(check)) = (
            self.consul.as_mut(),
            registration.and_then(|r| r.health_check.as_ref()),
        ) && check.target == CheckTarget::Ttl
        {
            c.check_ttl = check.interval;
        }
    }

    /// Connects to the enabled backends: see [`connect()`].
    pub async fn connect(&self) -> Result<Arc<dyn Registry>> {
        connect(self).await
    }
}

/// `scheme://user:password@host` -> `scheme://host`: credentials never enter an identity.
fn without_userinfo(address: &str) -> String {
    let (scheme, rest) = match address.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, address),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest.to_owned(),
    }
}

/// Connects to the enabled backends: one registry, or a [`MultiRegistry`] over several (in
/// write order); the embedded registry when none is enabled.
///
/// With several, a backend whose server cannot be reached now (or that takes over a second to
/// connect) is connected on its first use after this instead of failing or holding up the
/// whole (`registry::pending`): the others serve meanwhile. A lone backend that cannot be
/// reached is an error here.
pub async fn connect(registries: &Registries) -> Result<Arc<dyn Registry>> {
    let several = registries.enabled().len() > 1;
    let with_consul = async {
        match &registries.consul {
            Some(c) => consul(c).await.map(Some),
            None => Ok(None),
        }
    };
    let with_etcd = async {
        let Some(e) = &registries.etcd else {
            return Ok(None);
        };
        let config = e.clone();
        let connect = move || {
            let config = config.clone();
            async move { etcd(&config).await }
        };
        member(several, "etcd", e.keep_alive_interval(), connect)
            .await
            .map(Some)
    };
    let with_nacos = async {
        let Some(n) = &registries.nacos else {
            return Ok(None);
        };
        let config = n.clone();
        let connect = move || {
            let config = config.clone();
            async move { nacos(&config).await }
        };
        member(several, "nacos", n.keep_alive_interval, connect)
            .await
            .map(Some)
    };
    // ZooKeeper's client connects lazily when its server is down (a session on first use).
    let with_zookeeper = async {
        match &registries.zookeeper {
            Some(z) => zookeeper(z).await.map(Some),
            None => Ok(None),
        }
    };
    // At the same time, so that one slow to connect holds up no other.
    let (consul, etcd, nacos, zookeeper) =
        tokio::join!(with_consul, with_etcd, with_nacos, with_zookeeper);
    let mut members: Vec<Arc<dyn Registry>> = [consul?, etcd?, nacos?, zookeeper?]
        .into_iter()
        .flatten()
        .collect();
    // The agent's client connects on first use.
    if let Some(c) = &registries.chi {
        members.push(chi(c)?);
    }
    if let Some(m) = &registries.memory {
        members.push(Arc::new(Memory::from_config(m)));
    }
    if let Some(d) = &registries.dns {
        members.push(dns(d)?);
    }
    match members.len() {
        0 => Ok(Arc::new(Memory::new())),
        1 => Ok(members.remove(0)),
        _ => Ok(Arc::new(MultiRegistry::new(members))),
    }
}

/// Connects one member of the registries; with `several`, one whose server cannot be reached
/// now (or that takes long to connect) is connected on its first use after that
/// ([`pending::connect_member`]).
async fn member<F, Fut>(
    several: bool,
    backend: &'static str,
    keep_alive_interval: std::time::Duration,
    connect: F,
) -> Result<Arc<dyn Registry>>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Arc<dyn Registry>>> + Send + 'static,
{
    if several {
        pending::connect_member(backend, keep_alive_interval, connect).await
    } else {
        connect().await
    }
}

#[cfg(not(all(
    feature = "consul",
    feature = "etcd",
    feature = "nacos",
    feature = "zookeeper",
    feature = "chi",
    feature = "dns"
)))]
fn feature_missing(field: &str, backend: &str) -> crate::error::Error {
    crate::error::Error::config(
        field,
        format!(
            "chi was built without the `{backend}` feature; rebuild with `--features {backend}`"
        ),
    )
}

#[cfg(feature = "consul")]
async fn consul(c: &ConsulConfig) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(super::consul::Consul::new(c.clone())?))
}

#[cfg(not(feature = "consul"))]
async fn consul(_: &ConsulConfig) -> Result<Arc<dyn Registry>> {
    Err(feature_missing(super::consul::FIELD, "consul"))
}

#[cfg(feature = "etcd")]
async fn etcd(e: &EtcdConfig) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(super::etcd::Etcd::connect(e.clone()).await?))
}

#[cfg(not(feature = "etcd"))]
async fn etcd(_: &EtcdConfig) -> Result<Arc<dyn Registry>> {
    Err(feature_missing(super::etcd::FIELD, "etcd"))
}

#[cfg(feature = "nacos")]
async fn nacos(n: &NacosConfig) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(super::nacos::Nacos::connect(n.clone()).await?))
}

#[cfg(not(feature = "nacos"))]
async fn nacos(_: &NacosConfig) -> Result<Arc<dyn Registry>> {
    Err(feature_missing(super::nacos::FIELD, "nacos"))
}

#[cfg(feature = "zookeeper")]
async fn zookeeper(z: &ZookeeperConfig) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(
        super::zookeeper::Zookeeper::connect(z.clone()).await?,
    ))
}

#[cfg(not(feature = "zookeeper"))]
async fn zookeeper(_: &ZookeeperConfig) -> Result<Arc<dyn Registry>> {
    Err(feature_missing(super::zookeeper::FIELD, "zookeeper"))
}

#[cfg(feature = "chi")]
fn chi(c: &AgentConfig) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(super::chi::Agent::new(c.clone())?))
}

#[cfg(not(feature = "chi"))]
fn chi(_: &AgentConfig) -> Result<Arc<dyn Registry>> {
    Err(feature_missing(super::chi::FIELD, "chi"))
}

#[cfg(feature = "dns")]
fn dns(d: &DnsConfig) -> Result<Arc<dyn Registry>> {
    Ok(Arc::new(super::dns::Dns::new(d.clone())?))
}

#[cfg(not(feature = "dns"))]
fn dns(_: &DnsConfig) -> Result<Arc<dyn Registry>> {
    Err(feature_missing(super::dns::FIELD, "dns"))
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use crate::registry::nacos::NacosServerConfig;

    #[test]
    fn identity_names_backends_and_what_selects_their_data_without_secrets() {
        let mut etcd = EtcdConfig {
            endpoints: vec![
                "http://10.0.0.2:2379".into(),
                "http://root:hunter2@10.0.0.1:2379".into(),
            ],
            username: Some("root".into()),
            password: Some(crate::secret::Secret::new("hunter2")),
            ..EtcdConfig::default()
        };
        let r = Registries {
            etcd: Some(etcd.clone()),
            ..Registries::default()
        };
        let id = r.identity();
        assert_eq!(
            id,
            "etcd(endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379,prefix=/chi/services)"
        );
        assert!(!id.contains("hunter2") && !id.contains("root"), "{id}");
        etcd.endpoints.reverse();
        etcd.prefix = "/other".into();
        let other = Registries {
            etcd: Some(etcd),
            ..Registries::default()
        };
        assert_ne!(other.identity(), id, "another prefix is another registry");

        let nacos = NacosConfig {
            server_configs: vec![NacosServerConfig::new("127.0.0.1", 8848)],
            namespace_id: "prod".into(),
            ..NacosConfig::default()
        };
        let both = Registries {
            consul: Some(ConsulConfig::default()),
            nacos: Some(nacos),
            ..Registries::default()
        };
        assert_eq!(
            both.identity(),
            "consul(address=127.0.0.1:8500,datacenter=)+\
             nacos(servers=127.0.0.1:8848/nacos,namespace=prod,group=DEFAULT_GROUP,cluster=DEFAULT)"
        );
        assert_eq!(Registries::default().identity(), "memory");
    }
}
