//! The whole stack from one config file: [`Chi`].
//!
//! A service author's program wants four things from `chi-config.yaml`: its own registration
//! (with its health check) in every enabled registry, discovery of its peers with the configured
//! cache and retries, calls routed by version and region through the configured balancer, and
//! metrics. [`Chi::from_file`] builds all of them from the file, wired the way `chi agent` and
//! `chi proxy` wire them:
//!
//! - the registries that are enabled (the embedded one when none is), through
//!   [`registry::connect`](crate::registry::connect());
//! - the registration as peers must see it: `address: "0.0.0.0"` (a bind address, which
//!   Consul refuses) advertised as this host's address
//!   ([`ServiceConfig::advertised`](crate::ServiceConfig::advertised));
//! - a [`ServiceManager`] with the configured retry, which registers `registration` (with its
//!   health check, run where each registry expects it) when [`Chi::register`] is called: a server
//!   registers once it listens, not before;
//! - a [`DiscoveryClient`] with the configured cache, retry and restart grace;
//! - [`Routers`]: one [`Smart`](crate::routing::Smart) router per service with the configured
//!   strategy, routing and `health_check_enabled`, and (feature `http`) an
//!   [`HttpRouter`](crate::integration::HttpRouter) that calls peers by name with them;
//! - (feature `tower`) tower services over a peer's instances that follow the same config:
//!   [`Chi::balance`] and (feature `grpc`) [`Chi::grpc`], whose every request chi picks, and
//!   [`Chi::discover`], which feeds tower's own balancers;
//! - (feature `metrics`) every metric, into a Prometheus registry the caller passes.
//!
//! Every pick of [`Chi::http`], [`Chi::balance`] and [`Chi::grpc`] reads the hash key of the
//! hashing strategies from the header `load_balancer.hash_key_header` names (default
//! `X-Hash-Key`), and is told to one [`OnPick`] slot that [`Chi::metrics`] fills: from then on it
//! counts `load_balancer_selections_total` (labelled by instance unless
//! `metrics.per_instance_labels: false`) and `chi_routing_decisions_total`.
//!
//! [`Chi::shutdown`] deregisters first, so that peers stop picking this instance before it stops
//! serving. Nothing is global: two `Chi`s in one process (or one per test) are independent.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::discovery::DiscoveryClient;
use crate::error::{Error, Result};
use crate::manager::{RegistrationReport, ServiceManager};
use crate::registry::Registry;
use crate::routing::{OnPick, Routers};
use crate::util::AbortOnDrop;

/// The stack built from a [`Config`]; see the module docs.
pub struct Chi {
    config: Config,
    registry: Arc<dyn Registry>,
    manager: Arc<ServiceManager>,
    discovery: DiscoveryClient,
    routers: Routers,
    /// Told every pick of the HTTP helper and the tower services: the metrics, once registered.
    on_pick: OnPick,
    /// The one HTTP helper, so that its circuit breakers' counts reach [`Chi::metrics`].
    #[cfg(feature = "http")]
    http: Arc<crate::integration::HttpRouter>,
    /// Keeps the subsetting clients (this service's instances) up to date.
    _clients: Option<AbortOnDrop>,
}

impl std::fmt::Debug for Chi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chi")
            .field("registries", &self.config.registries.enabled())
            .field(
                "registration",
                &self.config.registration.as_ref().map(|r| &r.name),
            )
            .field("strategy", &self.routers.strategy())
            .finish_non_exhaustive()
    }
}

impl Chi {
    /// Reads `path` ([`Config::load`]) and builds the stack ([`Chi::new`]).
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Chi> {
        Self::new(Config::load(path)?).await
    }

    /// Builds the stack from `config`: connects the enabled registries and builds the manager,
    /// the discovery client and the routers. Registers nothing yet ([`Chi::register`]). An
    /// unspecified `registration.address` (`0.0.0.0`, as the example file has it) is
    /// advertised as this host's address ([`ServiceConfig::advertised`](crate::ServiceConfig::advertised)).
    pub async fn new(mut config: Config) -> Result<Chi> {
        config.registration = config.registration.map(crate::ServiceConfig::advertised);
        let routers = Routers::from_config(&config)?;
        let mut registries = config.registries.clone();
        registries.apply_registration(config.registration.as_ref());
        let registry = registries.connect().await?;
        Ok(Self::with_registry(config, registry, routers))
    }

    /// Builds the stack over an already connected `registry` (the config's registries are not
    /// used): for tests, or a registry chi has no adapter for.
    pub fn over(mut config: Config, registry: Arc<dyn Registry>) -> Result<Chi> {
        config.registration = config.registration.map(crate::ServiceConfig::advertised);
        let routers = Routers::from_config(&config)?;
        Ok(Self::with_registry(config, registry, routers))
    }

    fn with_registry(config: Config, registry: Arc<dyn Registry>, routers: Routers) -> Chi {
        let manager = Arc::new(ServiceManager::new(registry.clone()).with_retry(config.retry));
        let discovery = DiscoveryClient::builder()
            .cache(config.cache.clone())
            .retry(config.retry)
            .outage(config.outage)
            .build(registry.clone());
        let clients = follow_clients(&config, &discovery, &routers);
        let on_pick = OnPick::new();
        #[cfg(feature = "http")]
        let http = Arc::new(http_router(&config, &discovery, &routers, &on_pick));
        Chi {
            #[cfg(feature = "http")]
            http,
            config,
            registry,
            manager,
            discovery,
            routers,
            on_pick,
            _clients: clients,
        }
    }

    /// Registers the config's `registration` with its health check in every registry, as
    /// [`ServiceManager::register`]: `Ok` when at least one registry holds it, with a report
    /// that names those that do not (a partial registration; they are retried in the
    /// background); `.require_complete()?` makes a partial registration an error.
    pub async fn register(&self) -> Result<RegistrationReport> {
        let Some(registration) = &self.config.registration else {
            return Err(Error::config(
                "service_discovery.registration",
                "is missing: there is nothing to register",
            ));
        };
        self.manager.register(registration.clone()).await
    }

    /// Deregisters everything this stack registered, from every registry. Call it before the
    /// server stops accepting requests: peers then stop picking this instance first.
    pub async fn shutdown(&self) -> Vec<(String, Result<()>)> {
        self.manager.shutdown().await
    }

    /// The validated configuration (with the registration's address as advertised).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry (a [`MultiRegistry`](crate::registry::MultiRegistry) when several are
    /// enabled).
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The service manager (the Go sketch's `GetServiceManager`).
    pub fn manager(&self) -> &Arc<ServiceManager> {
        &self.manager
    }

    /// The discovery client (the Go sketch's `GetDiscoveryClient`).
    pub fn discovery(&self) -> &DiscoveryClient {
        &self.discovery
    }

    /// The hook every pick of [`Chi::http`], [`Chi::balance`] and [`Chi::grpc`] is told:
    /// [`Chi::metrics`] sets it; a caller with its own use for the picks (logs, other metrics)
    /// may set it instead.
    pub fn on_pick(&self) -> &OnPick {
        &self.on_pick
    }

    /// The router recipe: [`Routers::router`] gives a new router for one service.
    pub fn routers(&self) -> &Routers {
        &self.routers
    }

    /// The HTTP client that calls peers by name (`http://user-service/...`), routed with this
    /// stack's routers and discovery, with passive outlier detection (default settings) and the
    /// config's circuit breaker. One per stack, shared by every caller.
    #[cfg(feature = "http")]
    pub fn http(&self) -> Arc<crate::integration::HttpRouter> {
        self.http.clone()
    }

    /// A tower service over the instances of `service` whose every request this stack picks:
    /// the configured routing, strategy (the hash key from the request's
    /// `load_balancer.hash_key_header`, or a [`HashKey`](crate::integration::HashKey)
    /// extension), health rule and circuit breaker, outlier detection, and the metrics of
    /// [`Chi::metrics`]. `make` builds the service that calls one instance, the first time it is
    /// picked. See [`Balance`](crate::integration::Balance).
    #[cfg(feature = "tower")]
    pub fn balance<S, E>(
        &self,
        service: &str,
        make: impl Fn(&crate::Instance) -> std::result::Result<S, E> + Send + Sync + 'static,
    ) -> Result<crate::integration::Balance<S>>
    where
        S: Clone + Send + Sync + 'static,
        E: Into<crate::integration::BoxError>,
    {
        crate::instance::validate_name("service name", service)?;
        let settings = crate::routing::ServiceStateConfig {
            max_requests_per_instance: self.config.load_balancer.max_requests_per_instance,
            ..Default::default()
        };
        let state = crate::routing::ServiceState::new(self.routers.router(), &settings)
            .on_pick(self.on_pick.clone());
        Ok(
            crate::integration::Balance::new(service, self.discovery.clone(), state, make)
                .hash_key_header(self.routers.hash_key_header().clone()),
        )
    }

    /// A tonic transport for `service`: [`Chi::balance`] over one lazily connected `Channel`
    /// per instance (`http://address:port`), so a generated client
    /// (`HealthClient::new(chi.grpc("svc")?)`) calls the instance this stack picks for each
    /// request.
    #[cfg(all(feature = "tower", feature = "grpc"))]
    pub fn grpc(
        &self,
        service: &str,
    ) -> Result<crate::integration::Balance<tonic::transport::Channel>> {
        self.balance(service, |i: &crate::Instance| {
            tonic::transport::Endpoint::from_shared(format!("http://{}", i.authority()))
                .map(|e| e.connect_lazy())
        })
    }

    /// A [`Discover`](crate::integration::Discover) over a watch of `service`, for tower's own
    /// balancers and tonic's `Channel::balance_channel`: instances known to be unhealthy are
    /// left out unless `load_balancer.health_check_enabled` is `false`. Those balancers pick by
    /// their own rule (P2C), so the configured strategy, hash key and selection metrics apply to
    /// [`Chi::balance`], not to them.
    #[cfg(feature = "tower")]
    pub async fn discover<S, E, F>(
        &self,
        service: &str,
        make: F,
    ) -> Result<crate::integration::Discover<S, F>>
    where
        F: FnMut(&crate::Instance) -> std::result::Result<S, E>,
        E: std::fmt::Display,
    {
        let watcher = self.discovery.watch(service).await?;
        Ok(crate::integration::Discover::new(watcher, make)
            .skip_unhealthy(self.config.load_balancer.health_check_enabled))
    }

    /// Registers every metric into `registry` (labelled as the config's `metrics` block says)
    /// and wires it to this stack: discovery requests and cache (when
    /// `discovery.cache.enable_metrics` is on, as the file says), registration state, every pick
    /// of [`Chi::http`], [`Chi::balance`] and [`Chi::grpc`] (`load_balancer_selections_total`,
    /// `chi_routing_decisions_total`), and (feature `http`) the circuit breakers' refusals of
    /// [`Chi::http`]. Call it once: a second registry takes the picks over from the first.
    #[cfg(feature = "metrics")]
    pub fn metrics(
        &self,
        registry: &mut prometheus_client::registry::Registry,
    ) -> crate::metrics::Metrics {
        let metrics = crate::metrics::Metrics::register(registry, self.config.metrics);
        let picks = metrics.clone();
        self.on_pick
            .set(move |service, routed| picks.record_routed(service, routed));
        if self.config.cache.enable_metrics {
            metrics.instrument_client(registry, &self.discovery);
        }
        let manager = self.manager.clone();
        metrics.register_registrations(registry, move || manager.status());
        #[cfg(feature = "http")]
        {
            let http = self.http.clone();
            metrics.register_overflows(registry, move || http.overflow_counts());
        }
        metrics
    }
}

/// The stack's HTTP helper: its routers, hash key header, outlier detection, the configured
/// breaker, and the stack's [`OnPick`].
#[cfg(feature = "http")]
fn http_router(
    config: &Config,
    discovery: &DiscoveryClient,
    routers: &Routers,
    on_pick: &OnPick,
) -> crate::integration::HttpRouter {
    let key_header = routers.hash_key_header().clone();
    let routers = routers.clone();
    let http = crate::integration::HttpRouter::new(
        discovery.clone(),
        reqwest::Client::new(),
        crate::health::OutlierConfig::default(),
        move || routers.router(),
    )
    .hash_key_header(key_header)
    .on_pick(on_pick.clone());
    match config.load_balancer.max_requests_per_instance {
        Some(max) => http.circuit_breaker(max),
        None => http,
    }
}

/// With deterministic subsetting, follows this service's instances (the clients the subsets are
/// dealt among) into the routers' [`SubsetSource`](crate::routing::SubsetSource).
fn follow_clients(
    config: &Config,
    discovery: &DiscoveryClient,
    routers: &Routers,
) -> Option<AbortOnDrop> {
    let source = routers.subset_source()?.clone();
    let name = config.registration.as_ref()?.name.clone();
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!("subsetting: no tokio runtime to follow the clients; dealing as one client");
        return None;
    }
    let discovery = discovery.clone();
    let mut backoff = config.retry.backoff();
    Some(AbortOnDrop::spawn(async move {
        loop {
            match discovery.watch(&name).await {
                Ok(mut watcher) => {
                    while let Some(item) = watcher.next().await {
                        if item.is_ok()
                            && let Some(snapshot) = discovery.cached(&name)
                        {
                            backoff.reset();
                            let ids: Vec<&str> =
                                snapshot.instances().iter().map(|i| i.id.as_str()).collect();
                            source.set_clients(&ids);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "subsetting: cannot follow the clients yet")
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }))
}

#[cfg(test)]
mod tests;
