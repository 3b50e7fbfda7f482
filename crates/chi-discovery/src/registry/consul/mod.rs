//! Consul registry adapter (feature `consul`; [`ConsulConfig`] is there in every build).
//!
//! [`Consul`] registers instances on the **local agent** (`/v1/agent/service/register`, the way
//! Consul wants services registered: the agent runs their checks and syncs them to the catalog),
//! and discovers them through the **health endpoint** (`/v1/health/service/:name`), which answers
//! instances together with their check results.
//!
//! # Why a small client of our own
//!
//! The Consul crates on crates.io did not fit: `consul` (0.4) is a synchronous client on
//! reqwest 0.11 with `error-chain`; `consulrs` has a single 0.1 release; `rs-consul` brings its
//! own hyper + hyper-rustls client type. None documents Consul's blocking-query rules (index
//! resets, rate limits), and chi needs only five endpoints. A few hundred lines of reqwest + serde
//! in the `api` and `wire` submodules do exactly that, on the HTTP stack the rest of chi already uses, with a body-size
//! limit and an ACL token that only ever travels in a sensitive header.
//!
//! # Mapping
//!
//! - `Instance` tags, meta and address map onto Consul's; `version` travels in the meta key
//!   `chi_version` and a weight of 0 (out of rotation, which Consul's `Weights.Passing` cannot
//!   express: it must be ≥ 1) in `chi_weight`. Both keys are stripped again when reading.
//! - Every registration carries chi's **TTL check** (`chi:<id>:ttl`, TTL = [`ConsulConfig::check_ttl`]):
//!   [`Registry::keep_alive`] passes it (health healthy / unknown) or fails it (unhealthy), so
//!   chi's own health checker decides what Consul reports. A keep-alive that the agent answers
//!   "unknown check" (agent restarted, service deregistered) is [`Liveness::Lost`], and the
//!   [`ServiceManager`](crate::ServiceManager) registers the instance again.
//! - Active checks (HTTP, TCP, gRPC) from a [`HealthCheck`] are added with
//!   [`Registry::register_with_checks`]; the agent runs them itself. A `Ttl` target maps onto chi's
//!   TTL check. `deregister_critical_service_after` becomes Consul's
//!   `DeregisterCriticalServiceAfter` (Consul 1.8 clamps it to at least one minute and its reaper
//!   runs every 30 s, so a critical instance goes 60–90 s after it turned critical); `rise` and
//!   `fall` become `SuccessBeforePassing` and `FailuresBeforeCritical` (Consul 1.7+), so the
//!   agent's check flips after as many results in a row as chi's own probe would. Left out,
//!   Consul's default applies: every result counts at once.
//! - Health is aggregated over the node's and the service's checks: any `critical` →
//!   [`HealthStatus::Unhealthy`], else any `passing`/`warning` → `Healthy` (Consul DNS serves
//!   `warning` instances too), no checks at all → `Unknown`.
//!
//! # Watches
//!
//! [`Registry::watch`] runs **blocking queries** (`index` + `wait`) by Consul's documented rules:
//! the index is reset to 0 when it goes backwards (a new cluster, a snapshot restore) and raised
//! to 1 when Consul answers 0; an answer that arrives early without a new index is a spurious
//! wake-up and backs off exponentially with jitter, so a misbehaving server cannot drive a tight
//! loop; failures back off with jitter too (both with `retry::Backoff`). Every answer is a whole list, turned into
//! `Add / Remove / Update` with [`diff`](crate::registry::diff); after an error the next answer is sent as a `Reset`.
//!
//! # An agent that just came back
//!
//! A restarted agent (a dev agent, or one whose data was lost) answers "no instances" until the
//! registrants' keep-alives notice and register again (within a keep-alive interval,
//! `check_ttl / 3`). Believing it would empty every client's list meanwhile. So an empty answer
//! for a service that had instances is believed only once the agent has answered without a
//! transport failure for [`ConsulConfig::check_ttl`]: until then [`Registry::instances`] answers
//! [`Error::Unavailable`] (a [`DiscoveryClient`](crate::DiscoveryClient) keeps its last list,
//! stale) and a watch holds its list. A healthy agent's "zero instances" is honoured after that.
//!
//! # A cluster that loses its leader
//!
//! chi talks to one agent, usually the client agent on its own machine, which forwards reads to
//! the servers. While the servers elect a leader (a second or two after the leader dies) or have
//! lost their quorum, a read in Consul's default mode answers `500 No cluster leader` (or an RPC
//! error, for the blocking query that was waiting on the dead leader): an error like any other,
//! so [`Registry::instances`] fails (a [`DiscoveryClient`](crate::DiscoveryClient) keeps its
//! last list, stale) and a watch reports it in line, backs off, and sends a `Reset` with the
//! first answer of the new leader. Never an empty list. Registrations and keep-alives go to the
//! agent, which holds them locally and syncs them to the new leader: nothing to register again.
//!
//! [`ConsulConfig::consistency`] chooses Consul's consistency mode for discovery reads:
//! [`Consistency::Stale`] lets any server answer, so reads go on with no leader at all. Such an
//! answer says `X-Consul-KnownLeader: false`; an *empty* one for a service that had instances is
//! not believed (the server may be one that restarted and has not caught up), by the same rule
//! as for an agent that came back.

//!
//! # Layout
//!
//! As in every adapter: `config` (the settings and their checks), `convert` (instances to and
//! from Consul's bodies), `watch` (the watch task), and this module, the [`Registry`]; then the
//! Consul-specific `api` (the HTTP client), `wire` (the JSON bodies) and `tls`.

#[cfg(feature = "consul")]
pub(crate) mod api;
mod config;
#[cfg(feature = "consul")]
mod convert;
#[cfg(feature = "consul")]
mod tls;
#[cfg(feature = "consul")]
mod watch;
#[cfg(feature = "consul")]
mod wire;

#[cfg(feature = "consul")]
use {
    super::outage::EmptyGuard,
    super::{Liveness, Registry, WatchStream},
    crate::error::{Error, Result},
    crate::instance::{Filter, HealthCheck, HealthStatus, Instance, validate_name},
    api::{CheckUpdate, Health, HealthQuery},
    async_trait::async_trait,
    convert::{
        check_target_is_own, health_query, registration, to_instances, ttl_check_id, ttl_status,
    },
    std::collections::HashMap,
    std::sync::{Arc, Mutex, MutexGuard},
    std::time::Duration,
    wire::ServiceRegistration,
};

pub use config::{Consistency, ConsulConfig, DEFAULT_ADDRESS, ENV_TOKEN, FIELD, TlsConfig};
#[cfg(feature = "consul")]
pub use convert::decode_health;

#[cfg(feature = "consul")]
pub(crate) const BACKEND: &str = "consul";
/// Largest answer body chi reads from Consul (32 MiB): a health answer of a few thousand
/// instances is a few megabytes; past this the read stops and the call fails with an error
/// naming the limit, so a broken or hostile endpoint cannot make chi buffer without bound.
#[cfg(feature = "consul")]
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Meta key carrying `Instance::version`.
#[cfg(feature = "consul")]
pub const META_VERSION: &str = "chi_version";
/// Meta key carrying a weight Consul's `Weights` cannot (0).
#[cfg(feature = "consul")]
pub const META_WEIGHT: &str = "chi_weight";

/// The Consul registry. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
#[cfg(feature = "consul")]
pub struct Consul {
    inner: Arc<Inner>,
}

#[cfg(feature = "consul")]
impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "consul")]
struct Inner {
    client: api::Client,
    config: ConsulConfig,
    /// Active checks per instance id, so that a re-registration carries them again.
    checks: Mutex<HashMap<String, Vec<HealthCheck>>>,
    /// The protection against a restarted agent's empty answers (see the module docs).
    empty: EmptyGuard,
}

#[cfg(feature = "consul")]
impl Consul {
    /// A registry on the agent `config.address`. Checks the config; does not connect.
    pub fn new(config: ConsulConfig) -> Result<Consul> {
        let base = config.checked()?;
        let builder = tls::builder(config.tls.as_ref())?;
        let client = api::Client::new(
            base,
            &config.token,
            config.datacenter.clone(),
            config.request_timeout,
            builder,
        )?
        .with_consistency(config.consistency);
        Ok(Consul {
            inner: Arc::new(Inner {
                client,
                config,
                checks: Mutex::new(HashMap::new()),
                empty: EmptyGuard::new(true),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ConsulConfig {
        &self.inner.config
    }

    /// The instances of `service` that pass `filter`, filtered by Consul where it can: tags with
    /// `tag=`, meta with a `filter` expression, `healthy_only` with `passing` (Consul's notion:
    /// an instance in `warning` is left out too). The filter is applied again here, so the answer
    /// is exactly [`Filter::apply`] of it.
    pub async fn instances_filtered(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<Vec<Instance>> {
        validate_name("service name", service)?;
        let query = health_query(filter);
        let answer = self
            .inner
            .client
            .health_service(service, &query, None)
            .await?;
        Ok(filter.apply(&to_instances(answer.entries)))
    }

    fn registration(&self, instance: &Instance) -> ServiceRegistration {
        let checks = self
            .inner
            .lock_checks()
            .get(&instance.id)
            .cloned()
            .unwrap_or_default();
        registration(instance, &checks, &self.inner.config)
    }
}

#[cfg(feature = "consul")]
impl Inner {
    fn lock_checks(&self) -> MutexGuard<'_, HashMap<String, Vec<HealthCheck>>> {
        crate::util::lock(&self.checks)
    }

    /// Notes whether the agent answered (for [`Inner::guard_empty`]) and passes the answer on.
    fn note<T>(&self, answer: std::result::Result<T, api::ApiError>) -> Result<T> {
        let answer = answer.map_err(Error::from);
        self.empty.note(&answer);
        answer
    }

    /// [`Inner::note`] for a discovery read; an answer no leader stood behind (a stale read
    /// from a server that knows none) also counts as an agent that just came back, so its
    /// empty list for a service that had instances is not believed either.
    fn note_health(&self, answer: std::result::Result<Health, api::ApiError>) -> Result<Health> {
        let answer = self.note(answer)?;
        if !answer.known_leader {
            self.empty.down();
        }
        Ok(answer)
    }

    /// An empty list for a service that had instances, from an agent that came back less than
    /// `check_ttl` ago, is not believed yet: an error (the caller keeps its last list).
    fn guard_empty(&self, service: &str, list: &[Instance]) -> Result<()> {
        if self.empty.believe(service, list, self.config.check_ttl) {
            return Ok(());
        }
        Err(Error::Unavailable {
            backend: BACKEND.into(),
            message: format!(
                "no instance of `{service}`, from an agent that came back (or a server that \
                 knew no leader) less than {:?} ago; not believed until its registrants had \
                 time to register again",
                self.config.check_ttl
            ),
        })
    }
}

#[async_trait]
#[cfg(feature = "consul")]
impl Registry for Consul {
    fn backend(&self) -> &str {
        BACKEND
    }

    /// HTTP, TCP and gRPC checks run by the agent; a TTL check is chi's own, with the check's
    /// `deregister_critical_service_after`.
    fn runs_check(&self, _check: &HealthCheck) -> bool {
        true
    }

    /// Registers `instance` with active checks the agent runs (HTTP, TCP, gRPC; a `Ttl` target
    /// sets the deregister-after of chi's TTL check). The checks are remembered, so later
    /// re-registrations of the same id carry them too.
    async fn register_with_checks(
        &self,
        instance: &Instance,
        checks: &[HealthCheck],
    ) -> Result<()> {
        instance.validate()?;
        if !self.inner.config.allow_other_check_hosts {
            for c in checks {
                check_target_is_own(instance, &c.target)?;
            }
        }
        for c in checks {
            if let Some(after) = c.deregister_critical_service_after
                && after < Duration::from_secs(60)
            {
                tracing::info!(
                    id = %instance.id,
                    ?after,
                    "Consul reaps critical services after at least 1m (its minimum), and checks every 30s"
                );
            }
        }
        self.inner
            .lock_checks()
            .insert(instance.id.clone(), checks.to_vec());
        self.register(instance).await
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        instance.validate()?;
        let reg = self.registration(instance);
        self.inner.client.register(&reg).await?;
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        validate_name("service name", service)?;
        validate_name("instance id", id)?;
        self.inner.client.deregister(id).await?;
        self.inner.lock_checks().remove(id);
        Ok(())
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        validate_name("instance id", &instance.id)?;
        let output = format!("chi keep-alive: {health}");
        match self
            .inner
            .client
            .update_check(&ttl_check_id(&instance.id), ttl_status(health), &output)
            .await?
        {
            CheckUpdate::Updated => Ok(Liveness::Alive),
            CheckUpdate::Unknown => Ok(Liveness::Lost),
        }
    }

    fn keep_alive_interval(&self) -> Duration {
        (self.inner.config.check_ttl / 3).max(Duration::from_millis(30))
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        validate_name("service name", service)?;
        let answer = self.inner.note_health(
            self.inner
                .client
                .health_service(service, &HealthQuery::default(), None)
                .await,
        )?;
        let list = to_instances(answer.entries);
        self.inner.guard_empty(service, &list)?;
        Ok(list)
    }

    async fn services(&self) -> Result<Vec<String>> {
        Ok(self.inner.client.catalog_services().await?)
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        validate_name("service name", service)?;
        watch::start(self.inner.clone(), service.to_owned()).await
    }
}

#[cfg(test)]
#[cfg(feature = "consul")]
mod tests;
