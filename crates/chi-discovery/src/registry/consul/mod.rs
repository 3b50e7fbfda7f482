//! Consul registry adapter (feature `consul`).
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
//! resets, rate limits), and chi needs only five endpoints. About 500 lines of reqwest + serde in
//! the `api` submodule do exactly that, on the HTTP stack the rest of chi already uses, with a body-size
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
//!   [`Consul::register_with_checks`]; the agent runs them itself. A `Ttl` target maps onto chi's
//!   TTL check. `deregister_critical_service_after` becomes Consul's
//!   `DeregisterCriticalServiceAfter` (Consul 1.8 clamps it to at least one minute and its reaper
//!   runs every 30 s, so a critical instance goes 60–90 s after it turned critical).
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
//! loop; failures back off with jitter too. Every answer is a whole list, turned into
//! `Add / Remove / Update` with [`diff`]; after an error the next answer is sent as a `Reset`.
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

pub(crate) mod api;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use rand::Rng;
use reqwest::Url;
use tokio::time::Instant;

use super::empty::EmptyGuard;
use super::{Change, Liveness, Registry, WatchStream, diff};
use crate::error::{Error, Result};
use crate::instance::{CheckTarget, Filter, HealthCheck, HealthStatus, Instance, validate_name};
use crate::secret::Secret;
use api::{CheckDefinition, CheckUpdate, HealthQuery, ServiceEntry, ServiceRegistration, Weights};

pub(crate) const BACKEND: &str = "consul";
/// Largest answer body chi reads from Consul (32 MiB): a health answer of a few thousand
/// instances is a few megabytes; past this the read stops and the call fails with an error
/// naming the limit, so a broken or hostile endpoint cannot make chi buffer without bound.
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Meta key carrying `Instance::version`.
pub const META_VERSION: &str = "chi_version";
/// Meta key carrying a weight Consul's `Weights` cannot (0).
pub const META_WEIGHT: &str = "chi_weight";

/// How to reach Consul and how chi uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsulConfig {
    /// The agent: `127.0.0.1:8500`, or a URL with scheme (`https://consul.local:8501`, with an
    /// optional path prefix behind a proxy).
    pub address: String,
    /// ACL token, sent as `X-Consul-Token`. Empty: none (the anonymous token).
    ///
    /// A write without the permission fails with 403 and Consul's message; a *read* is filtered
    /// silently by Consul 1.8 (a service the token may not read answers as having no
    /// instances), so give discovery a token with `service:read`.
    pub token: Secret,
    /// Datacenter to discover in (`dc=`); `None` or empty: the agent's own.
    pub datacenter: Option<String>,
    /// TTL of chi's keep-alive check; keep-alives run every third of it.
    pub check_ttl: Duration,
    /// `DeregisterCriticalServiceAfter` of chi's TTL check: Consul removes an instance whose
    /// keep-alive stopped this long ago. `None`: it stays, critical, until deregistered.
    pub deregister_critical_after: Option<Duration>,
    /// How long one blocking query may wait for a change (Consul caps it at 10 minutes).
    pub wait: Duration,
    /// Deadline of one ordinary call (and of connecting).
    pub request_timeout: Duration,
    /// TLS settings; `Some` makes a scheme-less address `https`.
    pub tls: Option<TlsConfig>,
    /// Let active checks of [`Consul::register_with_checks`] target another host or port than
    /// the instance's own (an absolute HTTP URL, a TCP `host:port`). Off by default: the agent
    /// runs those checks, so a registration could otherwise make it fetch any address its
    /// network reaches (a cloud metadata endpoint, an internal admin page).
    pub allow_other_check_hosts: bool,
}

impl Default for ConsulConfig {
    /// The local agent without a token, 15 s TTL, 5 min blocking waits, 5 s call deadline.
    fn default() -> Self {
        ConsulConfig {
            address: "127.0.0.1:8500".into(),
            token: Secret::default(),
            datacenter: None,
            check_ttl: Duration::from_secs(15),
            deregister_critical_after: None,
            wait: Duration::from_secs(300),
            request_timeout: Duration::from_secs(5),
            tls: None,
            allow_other_check_hosts: false,
        }
    }
}

/// TLS to the agent's HTTPS port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the agent's certificate (else the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for agents with `verify_incoming`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Skip certificate verification. For tests only.
    pub insecure_skip_verify: bool,
}

/// The Consul registry. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Consul {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: api::Client,
    config: ConsulConfig,
    /// Active checks per instance id, so that a re-registration carries them again.
    checks: Mutex<HashMap<String, Vec<HealthCheck>>>,
    /// The protection against a restarted agent's empty answers (see the module docs).
    empty: EmptyGuard,
}

impl Consul {
    /// A registry on the agent `config.address`. Checks the config; does not connect.
    pub fn new(config: ConsulConfig) -> Result<Consul> {
        let base = base_url(&config.address, config.tls.is_some())?;
        if config.check_ttl < Duration::from_millis(100) {
            return Err(Error::config(
                "consul.check_ttl",
                format!("must be at least 100ms, got {:?}", config.check_ttl),
            ));
        }
        if config.wait.is_zero() || config.wait > Duration::from_secs(600) {
            return Err(Error::config(
                "consul.wait",
                format!("must be between 1ms and 10m, got {:?}", config.wait),
            ));
        }
        if config.request_timeout.is_zero() {
            return Err(Error::config("consul.request_timeout", "must be > 0"));
        }
        let builder = tls_builder(config.tls.as_ref())?;
        let client = api::Client::new(
            base,
            &config.token,
            config.datacenter.clone(),
            config.request_timeout,
            builder,
        )?;
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

    /// Registers `instance` with active checks the agent runs (HTTP, TCP, gRPC; a `Ttl` target
    /// sets the deregister-after of chi's TTL check). The checks are remembered, so later
    /// re-registrations of the same id (by the [`ServiceManager`](crate::ServiceManager)) carry
    /// them too.
    pub async fn register_with_checks(
        &self,
        instance: &Instance,
        checks: Vec<HealthCheck>,
    ) -> Result<()> {
        instance.validate()?;
        if !self.inner.config.allow_other_check_hosts {
            for c in &checks {
                check_target_is_own(instance, &c.target)?;
            }
        }
        self.inner.lock_checks().insert(instance.id.clone(), checks);
        self.register(instance).await
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
        let (entries, _) = self
            .inner
            .client
            .health_service(service, &query, None)
            .await?;
        Ok(filter.apply(&to_instances(entries)))
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

impl Inner {
    fn lock_checks(&self) -> MutexGuard<'_, HashMap<String, Vec<HealthCheck>>> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes whether the agent answered (for [`Inner::guard_empty`]) and passes the answer on.
    fn note<T>(&self, answer: std::result::Result<T, api::ApiError>) -> Result<T> {
        let answer = answer.map_err(Error::from);
        self.empty.note(&answer);
        answer
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
                "the agent came back less than {:?} ago and reports no instance of \
                 `{service}`; not believed until its registrants had time to register again",
                self.config.check_ttl
            ),
        })
    }
}

/// `127.0.0.1:8500` → `http://127.0.0.1:8500/`; URLs with a scheme are taken as they are.
fn base_url(address: &str, tls: bool) -> Result<Url> {
    let address = address.trim();
    if address.is_empty() {
        return Err(Error::config("consul.address", "must not be empty"));
    }
    let full = if address.contains("://") {
        address.to_owned()
    } else {
        format!("{}://{address}", if tls { "https" } else { "http" })
    };
    let url = Url::parse(&full).map_err(|e| {
        Error::config(
            "consul.address",
            format!("`{address}` is not host:port or a URL: {e}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(Error::config(
            "consul.address",
            format!("`{address}`: the scheme must be http or https"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(Error::config(
            "consul.address",
            "must not carry credentials or a query; put the ACL token in `consul.token`",
        ));
    }
    Ok(url)
}

fn tls_builder(tls: Option<&TlsConfig>) -> Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder();
    let Some(tls) = tls else { return Ok(builder) };
    let read = |field: &str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            Error::config(
                format!("consul.tls.{field}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    if let Some(ca) = &tls.ca_file {
        let pem = read("ca_file", ca)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::config("consul.tls.ca_file", format!("not a PEM certificate: {e}"))
        })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read("cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read("key_file", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                Error::config(
                    "consul.tls.cert_file",
                    format!("not a PEM certificate and key: {e}"),
                )
            })?;
            builder = builder.identity(id);
        }
        (None, None) => {}
        _ => {
            return Err(Error::config(
                "consul.tls",
                "cert_file and key_file go together",
            ));
        }
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder.use_rustls_tls())
}

/// Id of chi's TTL check of an instance.
fn ttl_check_id(id: &str) -> String {
    format!("chi:{id}:ttl")
}

fn ttl_status(health: HealthStatus) -> &'static str {
    match health {
        HealthStatus::Unhealthy => "critical",
        HealthStatus::Healthy | HealthStatus::Unknown => "passing",
    }
}

/// The register body of `instance` with its active `checks` and chi's TTL check.
fn registration(
    instance: &Instance,
    checks: &[HealthCheck],
    config: &ConsulConfig,
) -> ServiceRegistration {
    let mut meta = instance.meta.clone();
    if !instance.version.is_empty() {
        meta.insert(META_VERSION.into(), instance.version.clone());
    }
    if instance.weight == 0 {
        meta.insert(META_WEIGHT.into(), "0".into());
    }
    let weight = instance.weight.max(1);
    let authority = instance.authority();
    let mut ttl_deregister = config.deregister_critical_after;
    let mut defs = Vec::new();
    for (n, c) in checks.iter().enumerate() {
        let dereg = c.deregister_critical_service_after.map(api::go_duration);
        let mut def = CheckDefinition {
            check_id: format!("chi:{}:{n}", instance.id),
            interval: Some(api::go_duration(c.interval)),
            timeout: Some(api::go_duration(c.timeout)),
            deregister_critical_service_after: dereg,
            ..CheckDefinition::default()
        };
        match &c.target {
            CheckTarget::Http(target) => {
                def.name = format!("HTTP {target}");
                def.http = Some(http_target(target, &authority));
            }
            CheckTarget::Tcp(target) => {
                let t = if target.is_empty() {
                    authority.clone()
                } else {
                    target.clone()
                };
                def.name = format!("TCP {t}");
                def.tcp = Some(t);
            }
            CheckTarget::Grpc(service) => {
                def.name = format!("gRPC {service}");
                def.grpc = Some(if service.is_empty() {
                    authority.clone()
                } else {
                    format!("{authority}/{service}")
                });
            }
            CheckTarget::Ttl => {
                // The TTL check is chi's own, kept alive at the registry's cadence.
                if c.deregister_critical_service_after.is_some() {
                    ttl_deregister = c.deregister_critical_service_after;
                }
                continue;
            }
        }
        defs.push(def);
    }
    defs.push(CheckDefinition {
        check_id: ttl_check_id(&instance.id),
        name: "chi keep-alive".into(),
        ttl: Some(api::go_duration(config.check_ttl)),
        status: Some(ttl_status(instance.health).into()),
        deregister_critical_service_after: ttl_deregister.map(api::go_duration),
        ..CheckDefinition::default()
    });
    ServiceRegistration {
        id: instance.id.clone(),
        name: instance.name.clone(),
        tags: instance.tags.clone(),
        address: instance.address.clone(),
        port: instance.port,
        meta,
        weights: Weights {
            passing: weight,
            warning: weight,
        },
        checks: defs,
    }
}

/// Refuses an agent-run check whose target is not the instance's own address and port (see
/// [`ConsulConfig::allow_other_check_hosts`]).
fn check_target_is_own(instance: &Instance, target: &CheckTarget) -> Result<()> {
    let bare = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    let authority = instance.authority();
    let (shown, own) = match target {
        CheckTarget::Http(t) => {
            let full = http_target(t, &authority);
            let own = Url::parse(&full).is_ok_and(|u| {
                u.host_str()
                    .is_some_and(|h| bare(h) == bare(&instance.address))
                    && u.port_or_known_default() == Some(instance.port)
            });
            (full, own)
        }
        CheckTarget::Tcp(t) if !t.is_empty() => {
            let own = t.rsplit_once(':').is_some_and(|(h, p)| {
                bare(h) == bare(&instance.address) && p.parse::<u16>() == Ok(instance.port)
            });
            (t.clone(), own)
        }
        CheckTarget::Tcp(_) | CheckTarget::Grpc(_) | CheckTarget::Ttl => return Ok(()),
    };
    if own {
        Ok(())
    } else {
        Err(Error::invalid(
            "health check target",
            shown,
            format!(
                "is not the instance's address {authority}, and the Consul agent would probe it; \
                 set `allow_other_check_hosts` to allow other hosts"
            ),
        ))
    }
}

/// An HTTP check target: a full URL as is, a path against the instance.
fn http_target(target: &str, authority: &str) -> String {
    if target.starts_with("http://") || target.starts_with("https://") {
        target.to_owned()
    } else if target.starts_with('/') {
        format!("http://{authority}{target}")
    } else {
        format!("http://{authority}/{target}")
    }
}

/// What Consul can filter of `filter` itself.
fn health_query(filter: &Filter) -> HealthQuery {
    let exprs: Vec<String> = filter
        .meta
        .iter()
        .filter(|(k, _)| bexpr_identifier(k))
        .map(|(k, v)| format!("Service.Meta.{k} == {}", bexpr_string(v)))
        .collect();
    HealthQuery {
        passing: filter.healthy_only,
        tags: filter.tags.clone(),
        filter: (!exprs.is_empty()).then(|| exprs.join(" and ")),
    }
}

/// Meta keys that go-bexpr accepts as a selector part; others are filtered here only.
fn bexpr_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A double-quoted go-bexpr string literal.
fn bexpr_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn aggregate_health(entry: &ServiceEntry) -> HealthStatus {
    let mut any = false;
    for c in &entry.checks {
        match c.status.as_str() {
            "critical" => return HealthStatus::Unhealthy,
            "passing" | "warning" => any = true,
            _ => {}
        }
    }
    if any {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unknown
    }
}

fn to_instance(entry: ServiceEntry) -> Instance {
    let health = aggregate_health(&entry);
    let s = entry.service;
    let mut meta: BTreeMap<String, String> = s.meta;
    let version = meta.remove(META_VERSION).unwrap_or_default();
    let weight = match meta.remove(META_WEIGHT).and_then(|w| w.parse::<u32>().ok()) {
        Some(w) => w,
        None => s.weights.map(|w| w.passing).unwrap_or(1),
    };
    Instance {
        id: s.id,
        name: s.service,
        version,
        address: if s.address.is_empty() {
            entry.node.address
        } else {
            s.address
        },
        port: s.port,
        tags: s.tags,
        meta,
        weight,
        health,
    }
}

/// Entries to instances, sorted by id (several nodes may answer; the order is stable).
///
/// An entry that is not a valid [`Instance`] (an id or name chi could not use in a key or URL,
/// no address, port 0: services registered by other tools can be like that) is skipped with a
/// warning, never served: what discovery hands out always passes [`Instance::validate`].
fn to_instances(entries: Vec<ServiceEntry>) -> Vec<Instance> {
    let mut list: Vec<Instance> = entries
        .into_iter()
        .map(to_instance)
        .filter(|i| match i.validate() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(service = %i.name.escape_debug(), id = %i.id.escape_debug(), error = %e, "consul entry is not a usable instance; skipped");
                false
            }
        })
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    list
}

/// Decodes the body of a `/v1/health/service/:name` answer into instances, exactly as
/// discovery and watches do: entries that are not valid instances are skipped (see
/// [`Instance::validate`]), and a body that is not a health answer is an
/// [`Error::Registry`] naming the call. Public for fuzzing and for tools that read saved answers.
pub fn decode_health(body: &[u8]) -> Result<Vec<Instance>> {
    let entries = api::parse_health(body).map_err(|kind| {
        Error::from(api::ApiError {
            call: "GET /v1/health/service".into(),
            kind,
        })
    })?;
    Ok(to_instances(entries))
}

#[async_trait]
impl Registry for Consul {
    fn backend(&self) -> &str {
        BACKEND
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
        let (entries, _) = self.inner.note(
            self.inner
                .client
                .health_service(service, &HealthQuery::default(), None)
                .await,
        )?;
        let list = to_instances(entries);
        self.inner.guard_empty(service, &list)?;
        Ok(list)
    }

    async fn services(&self) -> Result<Vec<String>> {
        Ok(self.inner.client.catalog_services().await?)
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        validate_name("service name", service)?;
        let (entries, index) = self
            .inner
            .client
            .health_service(service, &HealthQuery::default(), None)
            .await?;
        let list = to_instances(entries);
        let view = list.iter().map(|i| (i.id.clone(), i.clone())).collect();
        let st = WatchState {
            inner: self.inner.clone(),
            service: service.to_owned(),
            index: BlockingIndex::default().after_answer(index).0,
            view: Some(view),
            pending: vec![Ok(Change::Reset(list))].into(),
            failures: 0,
            spurious: 0,
        };
        Ok(futures_util::stream::unfold(st, next_change).boxed())
    }
}

/// The index of a blocking query, kept by Consul's rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BlockingIndex(u64);

/// What an answer's index means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexMove {
    /// Moved forward: something may have changed.
    Forward,
    /// Same index: nothing changed (a wait that timed out, or a spurious wake-up).
    Same,
    /// Went backwards (a new cluster, a restore): start over from 0.
    Reset,
}

impl BlockingIndex {
    /// The next index after an answer carrying `answer`, and how it moved.
    fn after_answer(self, answer: u64) -> (BlockingIndex, IndexMove) {
        if answer == 0 {
            // Consul should never answer 0 (it did, in some versions); waiting on 1 is always
            // safe, where waiting on 0 would not block at all.
            (BlockingIndex(1), IndexMove::Same)
        } else if answer < self.0 {
            (BlockingIndex(0), IndexMove::Reset)
        } else if answer == self.0 {
            (self, IndexMove::Same)
        } else {
            (BlockingIndex(answer), IndexMove::Forward)
        }
    }
}

struct WatchState {
    inner: Arc<Inner>,
    service: String,
    index: BlockingIndex,
    /// The list as the consumer knows it; `None` after an error (the next answer is a `Reset`).
    view: Option<HashMap<String, Instance>>,
    pending: std::collections::VecDeque<Result<Change>>,
    failures: u32,
    spurious: u32,
}

/// Exponential backoff from `base`, capped, with ±25 % jitter so that many watchers do not
/// retry in lockstep.
fn backoff(base: Duration, cap: Duration, n: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let d = exp.min(cap);
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

async fn next_change(mut st: WatchState) -> Option<(Result<Change>, WatchState)> {
    loop {
        if let Some(item) = st.pending.pop_front() {
            return Some((item, st));
        }
        if st.failures > 0 {
            let delay = backoff(
                Duration::from_millis(100),
                Duration::from_secs(2),
                st.failures,
            );
            tokio::time::sleep(delay).await;
        } else if st.spurious > 0 {
            // Capped at 2 s: a misbehaving server gets at most one query every ~2 s, and a real
            // change that lands during the pause is still seen within 2 s (the next query with
            // the old index answers at once).
            let delay = backoff(
                Duration::from_millis(50),
                Duration::from_secs(2),
                st.spurious,
            );
            tokio::time::sleep(delay).await;
        }
        let wait = st.inner.config.wait;
        // Without a list to diff against, ask without blocking: the consumer needs a Reset now.
        let block = (st.view.is_some() && st.index.0 > 0).then_some((st.index.0, wait));
        let started = Instant::now();
        let answer = st.inner.note(
            st.inner
                .client
                .health_service(&st.service, &HealthQuery::default(), block)
                .await,
        );
        match answer {
            Ok((entries, index)) => {
                st.failures = 0;
                let (next, moved) = st.index.after_answer(index);
                st.index = next;
                // Only a blocking answer says anything about the server's behaviour: one that
                // comes back early without a new index is a spurious wake-up. Non-blocking
                // answers (after an error or an index reset) leave the count alone, so a server
                // whose index keeps going backwards cannot alternate us into a tight loop.
                if block.is_some() {
                    let early = started.elapsed() < wait / 2;
                    if early && moved != IndexMove::Forward {
                        st.spurious = st.spurious.saturating_add(1);
                        tracing::debug!(service = %st.service, index, "consul blocking query returned early without a new index; backing off");
                    } else {
                        st.spurious = 0;
                    }
                }
                let list = to_instances(entries);
                if st.inner.guard_empty(&st.service, &list).is_err() {
                    // A restarted agent before its registrants are back: hold the list.
                    tracing::info!(service = %st.service, "empty list from an agent that just came back; holding the last list until confirmed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                match st.view.as_mut() {
                    Some(view) => {
                        let changes = diff(view, &list);
                        for c in &changes {
                            c.clone().apply(view);
                        }
                        st.pending.extend(changes.into_iter().map(Ok));
                    }
                    None => {
                        st.view = Some(list.iter().map(|i| (i.id.clone(), i.clone())).collect());
                        st.pending.push_back(Ok(Change::Reset(list)));
                    }
                }
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                st.view = None;
                st.index = BlockingIndex(0);
                // One warning per outage; the retries that follow are debug noise.
                if st.failures == 1 {
                    tracing::warn!(service = %st.service, error = %e, "consul watch failed; retrying with backoff");
                } else {
                    tracing::debug!(service = %st.service, failures = st.failures, error = %e, "consul watch still failing");
                }
                return Some((Err(e), st));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConsulConfig {
        ConsulConfig {
            check_ttl: Duration::from_secs(9),
            ..ConsulConfig::default()
        }
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("127.0.0.1:8500", false).expect("url").as_str(),
            "http://127.0.0.1:8500/"
        );
        assert_eq!(
            base_url("consul.local:8501", true).expect("url").as_str(),
            "https://consul.local:8501/"
        );
        assert_eq!(
            base_url("https://h/consul", false).expect("url").as_str(),
            "https://h/consul"
        );
        for bad in ["", "ftp://h", "http://u:p@h:1", "http://h:1/?token=x"] {
            let err = base_url(bad, false).unwrap_err().to_string();
            assert!(err.starts_with("consul.address"), "{bad}: {err}");
            assert!(!err.contains("token=x") || bad.is_empty(), "{err}");
        }
    }

    #[test]
    fn config_debug_hides_the_token() {
        let cfg = ConsulConfig {
            token: Secret::new("s3cr3t"),
            ..config()
        };
        let consul = Consul::new(cfg).expect("consul");
        let dbg = format!("{consul:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("***"), "{dbg}");
    }

    #[test]
    fn rejects_bad_config() {
        let err = Consul::new(ConsulConfig {
            check_ttl: Duration::from_millis(1),
            ..config()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("consul.check_ttl"), "{err}");
        let err = Consul::new(ConsulConfig {
            wait: Duration::from_secs(3600),
            ..config()
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("consul.wait"), "{err}");
    }

    #[test]
    fn registration_carries_checks_version_and_weight() {
        let inst = Instance::new("api", "10.0.0.1", 8080)
            .with_id("api-1")
            .with_version("v2")
            .with_tag("blue")
            .with_meta("region", "eu")
            .with_weight(0);
        let checks = vec![
            HealthCheck::http("/health").every(Duration::from_millis(1500)),
            HealthCheck::tcp(),
            HealthCheck::grpc("pkg.Svc"),
            HealthCheck::ttl(Duration::from_secs(1)).deregister_after(Duration::from_secs(60)),
        ];
        let reg = registration(&inst, &checks, &config());
        assert_eq!(reg.meta.get(META_VERSION).map(String::as_str), Some("v2"));
        assert_eq!(reg.meta.get(META_WEIGHT).map(String::as_str), Some("0"));
        assert_eq!(reg.weights.passing, 1);
        let json = serde_json::to_value(&reg).expect("json");
        let checks = json["Checks"].as_array().expect("checks");
        assert_eq!(checks.len(), 4, "{json}");
        assert_eq!(checks[0]["HTTP"], "http://10.0.0.1:8080/health");
        assert_eq!(checks[0]["Interval"], "1500ms");
        assert_eq!(checks[1]["TCP"], "10.0.0.1:8080");
        assert_eq!(checks[2]["GRPC"], "10.0.0.1:8080/pkg.Svc");
        assert_eq!(checks[3]["CheckID"], "chi:api-1:ttl");
        assert_eq!(checks[3]["TTL"], "9s");
        assert_eq!(checks[3]["Status"], "passing");
        assert_eq!(checks[3]["DeregisterCriticalServiceAfter"], "60s");
        assert!(checks[0].get("TTL").is_none());
    }

    #[test]
    fn entries_map_back_onto_instances() {
        let inst = Instance::new("api", "10.0.0.1", 8080)
            .with_id("api-1")
            .with_version("v2")
            .with_tag("blue")
            .with_meta("region", "eu")
            .with_weight(0);
        let reg = registration(&inst, &[], &config());
        let json = serde_json::json!([{
            "Node": {"Address": "10.9.9.9"},
            "Service": {"ID": reg.id, "Service": reg.name, "Tags": reg.tags, "Address": reg.address,
                        "Meta": reg.meta, "Port": reg.port, "Weights": {"Passing": 1, "Warning": 1}},
            "Checks": [{"Status": "passing"}, {"Status": "warning"}]
        }]);
        let entries: Vec<ServiceEntry> = serde_json::from_value(json).expect("parse");
        let back = to_instances(entries);
        assert_eq!(back, vec![inst.with_health(HealthStatus::Healthy)]);
    }

    #[test]
    fn health_answers_decode_into_valid_instances_only() {
        let body = br#"[
            {"Node":{"Address":"10.9.9.9"},"Service":{"ID":"ok","Service":"api","Port":80}},
            {"Service":{"ID":"../escape","Service":"api","Address":"10.0.0.1","Port":80}},
            {"Service":{"ID":"no-port","Service":"api","Address":"10.0.0.1","Port":0}},
            {"Service":{"ID":"no-address","Service":"api","Port":80}}
        ]"#;
        let list = decode_health(body).expect("a health answer");
        let ids: Vec<&str> = list.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["ok"]);
        assert_eq!(list[0].address, "10.9.9.9");
        let e = decode_health(b"{}").expect_err("not a list");
        assert!(e.to_string().contains("not a health answer"), "{e}");
    }

    #[test]
    fn agent_checks_are_limited_to_the_instances_own_address() {
        let inst = Instance::new("api", "10.0.0.1", 8080);
        for ok in [
            CheckTarget::Http("/health".into()),
            CheckTarget::Http("//169.254.169.254/x".into()),
            CheckTarget::Http("http://10.0.0.1:8080/ready".into()),
            CheckTarget::Tcp(String::new()),
            CheckTarget::Tcp("10.0.0.1:8080".into()),
            CheckTarget::Grpc("svc".into()),
        ] {
            assert!(check_target_is_own(&inst, &ok).is_ok(), "{ok:?}");
        }
        for bad in [
            CheckTarget::Http("http://169.254.169.254/latest/meta-data/".into()),
            CheckTarget::Http("http://10.0.0.1:9999/admin".into()),
            CheckTarget::Http("http://10.0.0.1@evil.example:8080/".into()),
            CheckTarget::Tcp("10.0.0.2:8080".into()),
            CheckTarget::Tcp("10.0.0.1:22".into()),
        ] {
            let e = check_target_is_own(&inst, &bad).expect_err("another host");
            assert!(e.to_string().contains("allow_other_check_hosts"), "{e}");
        }
    }

    #[test]
    fn health_aggregation() {
        let entry = |statuses: &[&str]| -> ServiceEntry {
            serde_json::from_value(serde_json::json!({
                "Service": {"ID": "a", "Service": "s", "Port": 1},
                "Checks": statuses.iter().map(|s| serde_json::json!({"Status": s})).collect::<Vec<_>>()
            }))
            .expect("parse")
        };
        assert_eq!(
            aggregate_health(&entry(&["passing", "critical"])),
            HealthStatus::Unhealthy
        );
        assert_eq!(
            aggregate_health(&entry(&["passing", "warning"])),
            HealthStatus::Healthy
        );
        assert_eq!(aggregate_health(&entry(&[])), HealthStatus::Unknown);
        // An empty service address falls back to the node's.
        let i = to_instance(entry(&[]));
        assert_eq!(i.address, "");
    }

    #[test]
    fn filters_become_query_parameters() {
        let f = Filter::new()
            .tag("v1")
            .meta("region", "eu \"west\"")
            .meta("odd-key", "x")
            .healthy_only();
        let q = health_query(&f);
        assert!(q.passing);
        assert_eq!(q.tags, vec!["v1"]);
        assert_eq!(
            q.filter.as_deref(),
            Some(r#"Service.Meta.region == "eu \"west\"""#)
        );
        assert_eq!(health_query(&Filter::new()), HealthQuery::default());
    }

    #[test]
    fn blocking_index_follows_consuls_rules() {
        let i = BlockingIndex(10);
        assert_eq!(i.after_answer(12), (BlockingIndex(12), IndexMove::Forward));
        assert_eq!(i.after_answer(10), (BlockingIndex(10), IndexMove::Same));
        assert_eq!(i.after_answer(3), (BlockingIndex(0), IndexMove::Reset));
        assert_eq!(i.after_answer(0), (BlockingIndex(1), IndexMove::Same));
        assert_eq!(
            BlockingIndex(0).after_answer(0),
            (BlockingIndex(1), IndexMove::Same)
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for n in 1..40 {
            let d = backoff(base, cap, n);
            let nominal = base.saturating_mul(1 << (n - 1).min(16)).min(cap);
            assert!(
                d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25),
                "{n}: {d:?}"
            );
        }
    }
}
