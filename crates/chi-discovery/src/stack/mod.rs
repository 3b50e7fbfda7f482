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
//! - a [`DiscoveryClient`] with the configured cache and retry;
//! - [`Routers`]: one [`Smart`](crate::routing::Smart) router per service with the configured
//!   strategy, routing and `health_check_enabled`, and (feature `http`) an
//!   [`HttpRouter`](crate::integration::HttpRouter) that calls peers by name with them;
//! - (feature `metrics`) every metric, into a Prometheus registry the caller passes.
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
use crate::routing::Routers;
use crate::util::AbortOnDrop;

/// The stack built from a [`Config`]; see the module docs.
pub struct Chi {
    config: Config,
    registry: Arc<dyn Registry>,
    manager: Arc<ServiceManager>,
    discovery: DiscoveryClient,
    routers: Routers,
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
            .build(registry.clone());
        let clients = follow_clients(&config, &discovery, &routers);
        #[cfg(feature = "http")]
        let http = Arc::new(http_router(&config, &discovery, &routers));
        Chi {
            #[cfg(feature = "http")]
            http,
            config,
            registry,
            manager,
            discovery,
            routers,
            _clients: clients,
        }
    }

    /// Registers the config's `registration` with its health check in every registry. The
    /// report says which registries hold it; failed ones are retried in the background.
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

    /// Registers every metric into `registry` and wires it to this stack: discovery requests
    /// and cache (when `discovery.cache.enable_metrics` is on, as the file says), registration
    /// state, and (feature `http`) the circuit breakers' refusals of [`Chi::http`].
    #[cfg(feature = "metrics")]
    pub fn metrics(
        &self,
        registry: &mut prometheus_client::registry::Registry,
    ) -> crate::metrics::Metrics {
        let metrics =
            crate::metrics::Metrics::register(registry, crate::metrics::MetricsConfig::default());
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

/// The stack's HTTP helper: its routers, outlier detection, and the configured breaker.
#[cfg(feature = "http")]
fn http_router(
    config: &Config,
    discovery: &DiscoveryClient,
    routers: &Routers,
) -> crate::integration::HttpRouter {
    let routers = routers.clone();
    let http = crate::integration::HttpRouter::new(
        discovery.clone(),
        reqwest::Client::new(),
        crate::health::OutlierConfig::default(),
        move || routers.router(),
    );
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
    Some(AbortOnDrop::spawn(async move {
        loop {
            match discovery.watch(&name).await {
                Ok(mut watcher) => {
                    while let Some(item) = watcher.next().await {
                        if item.is_ok()
                            && let Some(snapshot) = discovery.cached(&name)
                        {
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
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }))
}

#[cfg(test)]
mod tests;
