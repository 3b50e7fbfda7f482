//! Nacos registry adapter (feature `nacos`; [`NacosConfig`] is there in every build), for Nacos
//! 2.x servers over gRPC.
//!
//! Built on the official `nacos-sdk` crate (naming, gRPC v2). It sits on tonic 0.14 and prost
//! 0.14, as `etcd-client` 0.21 and `tonic-health` 0.14 do, so the workspace builds a single
//! tonic (`cargo tree -d` shows no second copy).
//!
//! # What maps onto what
//!
//! - **Registration** is an *ephemeral* instance (weight, enabled, healthy, metadata) in
//!   [`NacosConfig::group_name`] and [`NacosConfig::cluster_name`]. A Nacos 2.x server keeps an
//!   ephemeral instance exactly as long as the gRPC connection that registered it: when the
//!   process dies, the connection closes and the instance leaves. A Nacos 2.x server keeps one
//!   instance per service per connection (a second replaces the first), so each instance of a
//!   service that this client holds at once goes out on a connection of its own, opened when
//!   first needed and reused; one instance per service needs one connection. nacos-sdk re-sends
//!   registrations after a reconnect; [`Registry::keep_alive`] checks on top of that that the
//!   server still holds the instance (answering [`Liveness::Lost`] otherwise, so the
//!   [`ServiceManager`](crate::ServiceManager) registers it again).
//! - **Health**: a Nacos 2.x server ties an ephemeral instance's health to the gRPC connection
//!   that registered it and does not take the `healthy` flag a client sends (rnacos keeps
//!   listing such an instance healthy). So an instance chi finds unhealthy (its probe failed,
//!   or the service said so) is *withdrawn*: deregistered from the server and held back, then
//!   registered again once healthy. Consumers see it leave and come back. An instance the
//!   server itself lists unhealthy maps to `Unhealthy`.
//! - **Id, version and tags** travel in metadata (`chi.id`, `chi.version`, `chi.tags` as a
//!   JSON array): see [`convert`] for the exact rules and for instances registered by other
//!   clients.
//! - **Discovery** asks the server directly (no SDK cache in between), so an answer is the
//!   server's current view; disabled instances are left out; tags, meta and health filters are
//!   chi's [`Filter`](crate::Filter) on the mapped instances.
//! - **Watch** subscribes (server push) and turns each pushed full list into `Add / Remove /
//!   Update` with [`diff`]. Every [`NacosConfig::watch_check_interval`] the watch also asks the
//!   server directly: a failure is reported in line (the consumer keeps its list, marked
//!   stale), the first success after it is a `Reset`, and a push that was lost is repaired.
//!
//! # A server that dies
//!
//! The config names every server of the cluster (`server_configs`); nacos-sdk talks to one and,
//! when it stops answering, connects to the next (about 2 s on loopback) and sends its
//! registrations and subscriptions again there, one registration per service and connection.
//! So each instance of a service goes out on a connection of its own, and every one is sent
//! again after a reconnect, before the dead server's peers drop what its clients had registered
//! there (rnacos: 15 s after the server stopped answering them).
//!
//! # Push-empty protection
//!
//! A server that just restarted knows no ephemeral instance until their clients reconnect, and
//! says "no instances" meanwhile; believing it would empty every client's list for a few
//! seconds (nacos-sdk's own protection drops every empty push forever instead, so a service
//! that really scaled to zero is never seen to). chi turns the SDK's protection off and applies
//! its own: an empty list for a service that had instances is believed only when the server
//! has been reachable for [`NacosConfig::empty_grace`] without interruption *and* a direct
//! query confirms it. Until then the watch holds the last list. A healthy server's confirmed
//! "zero instances" is honoured.
//!
//! Direct queries ([`Registry::instances`]) get the same protection: while the server has not
//! been reachable for the grace period, "no instances" of a service that had some is answered
//! as [`Error::Unavailable`], so a [`DiscoveryClient`](crate::DiscoveryClient) keeps serving
//! its last list, marked stale.
//!
//! # Limits, and why
//!
//! - **Nacos 1.x HTTP mode is not offered.** Every Nacos server since 2.0 (2021), and rnacos,
//!   speaks the gRPC API used here; only a Nacos 1.x *server* would need the 1.x HTTP open API
//!   (registration plus a heartbeat loop per instance, `/nacos/v1/ns/instance/beat`), and the
//!   1.x line is no longer maintained. It can be added later as a second mode of this type,
//!   behind the same trait, if a user on 1.x asks.
//! - **One instance per service per connection on real Nacos 2.x.** Nacos 2.x servers hold one
//!   ephemeral instance per service per client connection (a second registration of the same
//!   service replaces the first; rnacos keeps both). To register several instances of one
//!   service from one process against Nacos 2.x, use one [`Nacos`] per instance.
//! - **Deregistering another process's instance** works on rnacos; Nacos 2.x only lets the
//!   owning connection remove an ephemeral instance.
//! - **Dropping a [`Nacos`] does not close its connection** (nacos-sdk 0.8 has no shutdown), so
//!   its ephemeral instances stay until the process exits: deregister first
//!   ([`ServiceManager::shutdown`](crate::ServiceManager::shutdown) does).
//! - `services()` lists the services of the configured group that have at least one instance.
//! - rnacos differs from Nacos in two ways the tests show: its gRPC queries and pushes never
//!   list unhealthy instances (so an instance reported unhealthy leaves discovery instead of
//!   showing as `Unhealthy`; keep-alive then re-sends it rather than calling it lost), and it
//!   keeps the metadata an address first registered with (later registrations of the same
//!   address change weight and health, not metadata).
//!
//! # Errors and secrets
//!
//! Errors carry Nacos' error code and message ([`NacosError`]). The password never appears in
//! them nor in logs: chi logs in with its own plugin (nacos-sdk's logs the password at debug
//! level and hard-codes the context path), first in [`Nacos::connect`], so a wrong password
//! fails there with the server's answer, then at half the token's lifetime.

#[cfg(feature = "nacos")]
mod auth;
mod config;
#[cfg(feature = "nacos")]
pub mod convert;
#[cfg(feature = "nacos")]
mod error;
#[cfg(feature = "nacos")]
pub use convert::decode_instances;
#[cfg(feature = "nacos")]
pub use error::NacosError;
#[cfg(feature = "nacos")]
use error::sdk_error;
#[cfg(feature = "nacos")]
mod lanes;
#[cfg(feature = "nacos")]
mod watch;

#[cfg(feature = "nacos")]
use {
    super::outage::EmptyGuard,
    super::{Liveness, Registry, WatchStream, diff},
    crate::error::{Error, Result},
    crate::instance::{HealthStatus, Instance, validate_name},
    crate::keyed::KeyedLocks,
    async_trait::async_trait,
    convert::map_all,
    futures_util::StreamExt,
    lanes::{Lanes, Opener},
    nacos_sdk::api::naming::{NamingService, ServiceInstance},
    nacos_sdk::api::plugin::AuthPlugin,
    nacos_sdk::api::props::ClientProps,
    std::collections::HashMap,
    std::future::Future,
    std::sync::Arc,
    std::time::Duration,
};

pub use config::{
    DEFAULT_CLUSTER, DEFAULT_CONTEXT_PATH, DEFAULT_GROUP, DEFAULT_NAMESPACE, DEFAULT_PORT,
    ENV_PASSWORD, ENV_USERNAME, FIELD, GRPC_PORT_OFFSET, NacosConfig, NacosServerConfig,
};

#[cfg(feature = "nacos")]
const BACKEND: &str = "nacos";

/// A Nacos 2.x registry. Cheap to clone; clones share its connections: one, and one more for
/// each further instance of one service registered at the same time (see "Registration" in the
/// module docs).
#[derive(Clone)]
#[cfg(feature = "nacos")]
pub struct Nacos {
    shared: Arc<Shared>,
}

#[cfg(feature = "nacos")]
impl std::fmt::Debug for Nacos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nacos")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "nacos")]
pub(crate) struct Shared {
    config: NacosConfig,
    /// What this client registered, by `(service, id)`: deregistration needs the ip and port,
    /// and keep-alive the healthy flag last sent.
    registered: std::sync::Mutex<HashMap<(String, String), ServiceInstance>>,
    /// One lock per `(service, id)`, held across the calls that write it, so that writes of one
    /// registration keep their order while different registrations go to the server at once.
    writes: KeyedLocks<(String, String)>,
    /// Push-empty protection of direct queries.
    empty: EmptyGuard,
    /// The connections: lane 0 for queries, subscriptions and the first instance of each
    /// service ([`Shared::naming`]), one more for each further instance of a service.
    lanes: Lanes,
    /// One server subscription per watched service, shared by its watches.
    subscriptions: tokio::sync::Mutex<HashMap<String, watch::Subscription>>,
}

#[cfg(feature = "nacos")]
impl Nacos {
    /// Validates `config`, logs in when credentials are set (a wrong password fails here), and
    /// connects to the servers.
    pub async fn connect(config: NacosConfig) -> Result<Nacos> {
        config.validate()?;
        let servers: Vec<String> = config
            .server_configs
            .iter()
            .map(NacosServerConfig::authority)
            .collect();
        let mut props = ClientProps::new()
            .server_addr(servers.join(","))
            .namespace(config.namespace())
            .app_name(config.app_name.clone())
            // chi's config is the only source: no NACOS_* environment overrides.
            .env_first(false)
            // chi applies its own protection (see the module docs).
            .naming_push_empty_protection(false)
            .naming_load_cache_at_start(false)
            .cache_dir(
                config
                    .cache_dir
                    .clone()
                    .unwrap_or_else(|| std::env::temp_dir().join("chi-nacos")),
            );
        if let Some(port) = config.grpc_port {
            props = props.remote_grpc_port(port);
        }
        let mut auth: Option<Arc<dyn AuthPlugin>> = None;
        let mut refresher = None;
        if let Some(username) = config.username.clone().filter(|u| !u.is_empty()) {
            let login = auth::Login::new(
                config
                    .server_configs
                    .iter()
                    .map(|s| (s.authority(), s.context_path()))
                    .collect(),
                username,
                config.password.clone().unwrap_or_default(),
                config.timeout,
            );
            login
                .login()
                .await
                .map_err(|e| Error::registry(BACKEND, e))?;
            let login = Arc::new(login);
            refresher = Some(Arc::downgrade(&login));
            auth = Some(login);
        }
        let opener = Opener {
            props,
            auth,
            timeout: config.connect_timeout,
            servers: config
                .server_configs
                .iter()
                .map(|s| (s.authority(), s.grpc_authority(config.grpc_port)))
                .collect(),
        };
        let lanes = Lanes::open(opener).await?;
        let nacos = Nacos {
            shared: Arc::new(Shared {
                config,
                registered: std::sync::Mutex::new(HashMap::new()),
                writes: KeyedLocks::new(),
                empty: EmptyGuard::new(false),
                lanes,
                subscriptions: tokio::sync::Mutex::new(HashMap::new()),
            }),
        };
        // nacos-sdk connects lazily and retries in the background; one real call tells a
        // server that is up from one that is not (and a token the server refuses).
        nacos
            .shared
            .call(nacos.shared.naming().get_service_list(
                1,
                1,
                Some(nacos.shared.config.group_name.clone()),
            ))
            .await?;
        // Only a working connection gets a token refresher.
        if let Some(login) = refresher {
            tokio::spawn(auth::Login::refresh_loop(login));
        }
        Ok(nacos)
    }

    /// The config this registry was built from.
    pub fn config(&self) -> &NacosConfig {
        &self.shared.config
    }
}

/// Service names become part of Nacos keys (`group@@service`): chi's rules plus no `@@`.
#[cfg(feature = "nacos")]
fn check_service(service: &str) -> Result<()> {
    validate_name("service name", service)?;
    if service.contains("@@") {
        return Err(Error::invalid(
            "service name",
            service,
            "must not contain `@@` (Nacos' group separator)",
        ));
    }
    Ok(())
}

#[cfg(feature = "nacos")]
impl Nacos {
    /// Takes an unhealthy instance off the server and remembers it as ours, unhealthy, so that
    /// keep-alives hold it back until it is healthy again (the caller holds its write lock).
    async fn withdraw(
        &self,
        key: &(String, String),
        instance: &Instance,
        ours: Option<ServiceInstance>,
    ) -> Result<()> {
        let mut si = match ours {
            Some(si) => si,
            None => convert::to_nacos(instance, &self.shared.config.cluster_name)?,
        };
        self.shared.deregister_raw(key, si.clone()).await?;
        si.healthy = false;
        self.shared.remember(key.clone(), Some(si));
        Ok(())
    }
}

#[cfg(feature = "nacos")]
impl Shared {
    /// The connection of queries and subscriptions (lane 0).
    pub(crate) fn naming(&self) -> &NamingService {
        self.lanes.first()
    }

    /// What this client last sent for `(service, id)`.
    fn ours(&self, key: &(String, String)) -> Option<ServiceInstance> {
        crate::util::lock(&self.registered).get(key).cloned()
    }

    /// Notes what this client sent for `(service, id)` (`None`: deregistered).
    fn remember(&self, key: (String, String), sent: Option<ServiceInstance>) {
        if sent.is_none() {
            self.lanes.release(&key);
        }
        let mut registered = crate::util::lock(&self.registered);
        match sent {
            Some(si) => registered.insert(key, si),
            None => registered.remove(&key),
        };
    }

    /// One SDK call with the configured deadline, its error mapped.
    async fn call<T>(
        &self,
        fut: impl Future<Output = nacos_sdk::api::error::Result<T>>,
    ) -> Result<T> {
        let result = match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(sdk_error(e)),
            Err(_) => Err(Error::Timeout {
                backend: BACKEND.into(),
                after: self.config.timeout,
            }),
        };
        self.empty.note(&result);
        result
    }

    /// Push-empty protection for direct queries: an empty answer for a service that had
    /// instances, from a server that only just came back, is an error (the caller keeps its
    /// last list) rather than an empty list.
    fn guard_empty(&self, service: &str, list: &[Instance]) -> Result<()> {
        if !self.config.push_empty_protection
            || self.empty.believe(service, list, self.config.empty_grace)
        {
            return Ok(());
        }
        Err(Error::Unavailable {
            backend: BACKEND.into(),
            message: format!(
                "the server reconnected less than {:?} ago and reports no instance of \
                 `{service}`; not believed yet (push-empty protection)",
                self.config.empty_grace
            ),
        })
    }

    fn group(&self) -> Option<String> {
        Some(self.config.group_name.clone())
    }

    /// The server's current instances of `service` (not the SDK's cache), as Nacos has them.
    async fn query_raw(&self, service: &str) -> Result<Vec<ServiceInstance>> {
        self.query_raw_on(self.naming(), service).await
    }

    /// [`Shared::query_raw`], asked on `lane`.
    async fn query_raw_on(
        &self,
        lane: &NamingService,
        service: &str,
    ) -> Result<Vec<ServiceInstance>> {
        self.call(lane.get_all_instances(service.to_owned(), self.group(), Vec::new(), false))
            .await
    }

    /// The server's current instances of `service`, mapped.
    pub(crate) async fn query(&self, service: &str) -> Result<Vec<Instance>> {
        Ok(map_all(service, &self.query_raw(service).await?))
    }

    /// The SDK's subscribed copy of `service` (what the last push said); no network call once
    /// subscribed.
    pub(crate) async fn cached(&self, service: &str) -> Result<Vec<Instance>> {
        let raw = self
            .call(self.naming().get_all_instances(
                service.to_owned(),
                self.group(),
                Vec::new(),
                true,
            ))
            .await?;
        Ok(map_all(service, &raw))
    }

    /// Registers `si` as `(service, id)`, on its lane.
    async fn register_raw(&self, key: &(String, String), si: ServiceInstance) -> Result<()> {
        let lane = self.lanes.take(key).await?;
        self.call(lane.register_instance(key.0.clone(), self.group(), si))
            .await
    }

    /// Deregisters `si` of `(service, id)`, on the lane it was registered on.
    async fn deregister_raw(&self, key: &(String, String), si: ServiceInstance) -> Result<()> {
        let lane = self.lanes.of(key);
        self.call(lane.deregister_instance(key.0.clone(), self.group(), si))
            .await
    }
}

#[async_trait]
#[cfg(feature = "nacos")]
impl Registry for Nacos {
    fn backend(&self) -> &str {
        BACKEND
    }

    async fn register(&self, instance: &Instance) -> Result<()> {
        instance.validate_registration()?;
        check_service(&instance.name)?;
        let si = convert::to_nacos(instance, &self.shared.config.cluster_name)?;
        let key = (instance.name.clone(), instance.id.clone());
        let _write = self.shared.writes.lock(&key).await;
        // Same id at another address: the old one must go, or it would linger until this
        // connection closes.
        if let Some(old) = self.shared.ours(&key)
            && (old.ip != si.ip || old.port != si.port)
        {
            self.shared.deregister_raw(&key, old).await?;
        }
        if !si.healthy {
            // Registered while unhealthy: held back until healthy (see "Health" above).
            return self.withdraw(&key, instance, Some(si)).await;
        }
        self.shared.register_raw(&key, si.clone()).await?;
        self.shared.remember(key, Some(si));
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<()> {
        check_service(service)?;
        let key = (service.to_owned(), id.to_owned());
        let _write = self.shared.writes.lock(&key).await;
        let target = match self.shared.ours(&key) {
            Some(si) => Some(si),
            // Not ours: find it on the server by chi's id.
            None => self
                .shared
                .query_raw(service)
                .await?
                .into_iter()
                .find(|si| convert::from_nacos(service, si).is_some_and(|i| i.id == id)),
        };
        if let Some(si) = target {
            self.shared.deregister_raw(&key, si).await?;
        }
        self.shared.remember(key, None);
        Ok(())
    }

    async fn keep_alive(&self, instance: &Instance, health: HealthStatus) -> Result<Liveness> {
        check_service(&instance.name)?;
        let key = (instance.name.clone(), instance.id.clone());
        // Asked on the instance's own connection: the server that took its registration lists
        // it at once, where another member of a cluster lists it only once the copy reached it.
        let lane = self.shared.lanes.of(&key);
        let on_server = map_all(
            &instance.name,
            &self.shared.query_raw_on(&lane, &instance.name).await?,
        );
        // Nacos knows healthy or not; chi's Unknown counts as healthy.
        let want_healthy = health != HealthStatus::Unhealthy;
        let _write = self.shared.writes.lock(&key).await;
        let ours = self.shared.ours(&key);
        let withdrawn = ours.as_ref().is_some_and(|si| !si.healthy);
        match (on_server.iter().find(|i| i.id == instance.id), want_healthy) {
            (Some(found), true) if found.health == HealthStatus::Healthy => Ok(Liveness::Alive),
            (Some(_), false) => {
                self.withdraw(&key, instance, ours).await?;
                Ok(Liveness::Alive)
            }
            (None, false) if withdrawn => Ok(Liveness::Alive),
            (None, true) if !withdrawn => Ok(Liveness::Lost),
            // Healthy again after a withdrawal, or listed unhealthy by the server: register.
            (_, true) => {
                let mut si = match ours {
                    Some(si) => si,
                    None => convert::to_nacos(instance, &self.shared.config.cluster_name)?,
                };
                si.healthy = true;
                self.shared.register_raw(&key, si.clone()).await?;
                self.shared.remember(key, Some(si));
                Ok(Liveness::Alive)
            }
            (None, false) => Ok(Liveness::Lost),
        }
    }

    fn keep_alive_interval(&self) -> Duration {
        self.shared.config.keep_alive_interval
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>> {
        check_service(service)?;
        let list = self.shared.query(service).await?;
        self.shared.guard_empty(service, &list)?;
        Ok(list)
    }

    async fn services(&self) -> Result<Vec<String>> {
        const PAGE: i32 = 500;
        let mut names = Vec::new();
        let mut page = 1;
        loop {
            let (batch, total) = self
                .shared
                .call(
                    self.shared
                        .naming()
                        .get_service_list(page, PAGE, self.shared.group()),
                )
                .await?;
            let got = batch.len();
            names.extend(batch);
            if got == 0 || names.len() >= usize::try_from(total).unwrap_or(0) {
                break;
            }
            page += 1;
        }
        // Nacos keeps a service for a while after its last instance left; the trait promises
        // only services with instances.
        let checked: Vec<(String, Result<Vec<ServiceInstance>>)> =
            futures_util::stream::iter(names)
                .map(|name| async move {
                    let r = self.shared.query_raw(&name).await;
                    (name, r)
                })
                .buffer_unordered(8)
                .collect()
                .await;
        let mut out = Vec::new();
        for (name, r) in checked {
            if !map_all(&name, &r?).is_empty() {
                out.push(name);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn watch(&self, service: &str) -> Result<WatchStream> {
        check_service(service)?;
        watch::start(self.shared.clone(), service.to_owned()).await
    }
}

#[cfg(test)]
#[cfg(feature = "nacos")]
mod tests;
