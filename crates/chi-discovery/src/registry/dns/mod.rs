//! DNS registry adapter, read-only (feature `dns`; [`DnsConfig`] is there in every build).
//!
//! Kubernetes (a headless service's A records, a named port's SRV records), Consul's DNS
//! interface, a zone a team runs in bind, and the clients of gRPC's and Envoy's DNS resolvers all
//! find services by name in DNS. [`Dns`] reads them as a chi registry: discovery, watches, the
//! discovery cache, routing and every balancer work on top of it as on any other backend.
//!
//! # Mapping
//!
//! - **SRV** (`dns://SERVER?srv=_{service}._tcp.svc.cluster.local`): the records at the name
//!   the template gives (RFC 2782), each target resolved to its addresses (from the answer's
//!   additional section when the server sent them, else with A and AAAA queries), at the
//!   record's port. Priority is a failover level: only the lowest level with a resolvable target
//!   is served, so the balancers never spread load onto a backup level. Weight is the instance's
//!   weight, weight 0 counted as 1 (RFC 2782's chance for a weight-0 record). See `convert` for
//!   the rules and why.
//! - **A/AAAA** (`dns://SERVER?a={service}.default.svc.cluster.local&port=8080`): every address
//!   at the fixed port, weight 1.
//! - Instances have chi's default id `SERVICE-ADDRESS-PORT`, health `Unknown` (DNS says nothing
//!   about health; `Unknown` passes `healthy_only`, and chi's own probes and outlier detection
//!   still apply), no tags, no version. SRV instances carry `dns_target`, `dns_priority` and
//!   `dns_weight` in their metadata.
//! - A service name must be one DNS label (letters, digits, `-`, `_`, at most 63): anything else
//!   is an [`Error::Invalid`](crate::Error::Invalid) naming the service, before any query.
//!
//! # Answers and errors
//!
//! NXDOMAIN, and an answer without records of the type asked (NODATA), mean the service has no
//! instances: an empty list, honoured as any registry's "zero instances" is. A timeout, SERVFAIL,
//! REFUSED or an unreachable server is an error: [`Registry::instances`] fails (a
//! [`DiscoveryClient`](crate::DiscoveryClient) keeps serving its last list, stale) and a watch
//! reports it in its stream and keeps its list.
//!
//! # Watches
//!
//! A watch resolves again when the records' TTL runs out (the smallest TTL of the answer,
//! addresses included; the negative TTL for an empty answer), within
//! [`DnsConfig::min_refresh`] and [`DnsConfig::max_refresh`], and sends what changed as
//! `Add / Remove / Update` ([`diff`](crate::registry::diff)), after a first `Reset`. After an
//! error it retries with backoff from `min_refresh` to `max_refresh`, and its next answer is a
//! `Reset`.
//!
//! # Read-only
//!
//! DNS records are published by their own server (Kubernetes, Consul, a zone), so writes are
//! refused ([`Registry::read_only`]): a config that registers a service with DNS as its only
//! registry is refused when it is loaded, and in a multi-registry DNS serves discovery only (the
//! [`ServiceManager`](crate::ServiceManager) registers in the other members and does not count
//! DNS as a failed backend). DNS cannot list its names, so [`Registry::services`] answers the
//! services this registry has found instances of.
//!
//! # Layout
//!
//! As in every adapter: `config` (the settings and the DNS name rules), `convert` (records to
//! instances), `watch` (the watch task), and this module, the [`Registry`]; then `resolve`, the
//! queries through hickory-resolver and what their answers mean.

mod config;
#[cfg(feature = "dns")]
mod convert;
#[cfg(feature = "dns")]
mod resolve;
#[cfg(feature = "dns")]
mod watch;

pub use config::{DEFAULT_PORT, DnsConfig, DnsQuery, FIELD, SERVICE, SYSTEM_RESOLV_CONF};
#[cfg(feature = "dns")]
pub use convert::{META_PRIORITY, META_TARGET, META_WEIGHT};

#[cfg(feature = "dns")]
use {
    super::{Liveness, Registry, WatchStream, read_only},
    crate::error::Result,
    crate::instance::{HealthCheck, HealthStatus, Instance},
    async_trait::async_trait,
    std::collections::{BTreeSet, HashMap},
    std::sync::{Arc, Mutex},
    std::time::Duration,
};

#[cfg(feature = "dns")]
pub(crate) const BACKEND: &str = "dns";

/// The DNS registry. Cheap to clone; clones share the resolver.
#[derive(Clone)]
#[cfg(feature = "dns")]
pub struct Dns {
    inner: Arc<Inner>,
}

#[cfg(feature = "dns")]
impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "dns")]
struct Inner {
    config: DnsConfig,
    resolver: resolve::Resolver,
    /// Services last found with instances: what [`Registry::services`] can answer.
    known: Mutex<BTreeSet<String>>,
}

/// One resolution of a service: its instances and when to look again.
#[cfg(feature = "dns")]
struct Resolution {
    instances: Vec<Instance>,
    ttl: Option<u32>,
}

#[cfg(feature = "dns")]
impl Dns {
    /// A registry reading `config.server` (or the system resolver). Checks the config; sends
    /// no query.
    pub fn new(config: DnsConfig) -> Result<Dns> {
        let server = config.checked()?;
        let resolver = resolve::Resolver::new(&config, server)?;
        Ok(Dns {
            inner: Arc::new(Inner {
                config,
                resolver,
                known: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.inner.config
    }
}

#[cfg(feature = "dns")]
impl Inner {
    /// The instances of `service` now, and the TTL they came with.
    async fn resolve(&self, service: &str) -> Result<Resolution> {
        let name = resolve::dns_name(&self.config.name_of(service)?)?;
        let resolution = match &self.config.query {
            DnsQuery::Srv(_) => self.resolve_srv(service, &name).await?,
            DnsQuery::A { port, .. } => {
                let answer = self.resolver.addresses(&name).await?;
                Resolution {
                    instances: convert::address_instances(service, &answer.records, *port),
                    ttl: answer.ttl,
                }
            }
        };
        let mut known = crate::util::lock(&self.known);
        if resolution.instances.is_empty() {
            known.remove(service);
        } else if !known.contains(service) {
            known.insert(service.to_owned());
        }
        Ok(resolution)
    }

    /// SRV: the lowest priority level with an instance. Targets are resolved one level at a
    /// time, so a backup level costs no query while a lower level serves.
    async fn resolve_srv(
        &self,
        service: &str,
        name: &hickory_resolver::proto::rr::Name,
    ) -> Result<Resolution> {
        let (answer, mut addresses) = self.resolver.srv(name).await?;
        let mut ttl = answer.ttl;
        for (_, level) in convert::levels(answer.records) {
            let missing: BTreeSet<&str> = level
                .iter()
                .map(|r| r.target.as_str())
                .filter(|t| !addresses.contains_key(*t))
                .collect();
            let lookups = missing.iter().map(|target| async move {
                // A target that is not a name DNS can ask for serves nothing (as one that does
                // not resolve); it does not fail the whole answer.
                match resolve::dns_name(&format!("{target}.")) {
                    Ok(n) => self.resolver.addresses(&n).await,
                    Err(e) => {
                        tracing::debug!(%target, error = %e, "SRV target is not a DNS name");
                        Ok(resolve::Answer {
                            records: Vec::new(),
                            ttl: None,
                        })
                    }
                }
            });
            let found = futures_util::future::join_all(lookups).await;
            let mut resolved: HashMap<String, Vec<std::net::IpAddr>> = HashMap::new();
            for (target, answer) in missing.iter().zip(found) {
                let answer = answer?;
                ttl = [ttl, answer.ttl].into_iter().flatten().min();
                resolved.insert((*target).to_owned(), answer.records);
            }
            addresses.extend(resolved);
            let instances = convert::level_instances(service, &level, &addresses);
            if !instances.is_empty() {
                return Ok(Resolution { instances, ttl });
            }
        }
        Ok(Resolution {
            instances: Vec::new(),
            ttl,
        })
    }

    /// When to resolve again after an answer with `ttl`: the TTL within the refresh bounds.
    fn refresh_after(&self, ttl: Option<u32>) -> Duration {
        refresh_after(&self.config, ttl)
    }
}

/// The TTL within `[min_refresh, max_refresh]`; `min_refresh` without one.
#[cfg(feature = "dns")]
fn refresh_after(config: &DnsConfig, ttl: Option<u32>) -> Duration {
    ttl.map_or(config.min_refresh, |t| {
        Duration::from_secs(u64::from(t)).clamp(config.min_refresh, config.max_refresh)
    })
}

#[async_trait]
#[cfg(feature = "dns")]
impl Registry for Dns {
    fn backend(&self) -> &str {
        BACKEND
    }

    fn read_only(&self) -> bool {
        true
    }

    async fn register(&self, _instance: &Instance) -> Result<()> {
        Err(read_only(BACKEND))
    }

    async fn register_with_checks(&self, _: &Instance, _: &[HealthCheck]) -> Result<()> {
        Err(read_only(BACKEND))
    }

    async fn deregister(&self, _service: &str, _id: &str) -> Result<()> {
        Err(read_only(BACKEND))
    }

    async fn keep_alive(&self, _: &Instance, _: HealthStatus) -> Result<Liveness> {
        Err(read_only(BACKEND))
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        Ok(self.inner.resolve(service).await?.instances)
    }

    /// The services this registry found instances of at their last resolution: DNS cannot
    /// list names.
    async fn services(&self) -> Result<Vec<String>> {
        Ok(crate::util::lock(&self.inner.known)
            .iter()
            .cloned()
            .collect())
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        watch::start(self.inner.clone(), service.to_owned()).await
    }
}

#[cfg(test)]
#[cfg(feature = "dns")]
mod tests;
