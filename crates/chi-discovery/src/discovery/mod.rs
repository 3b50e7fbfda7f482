//! The discovery client: find instances by name, filter them, watch them, and keep serving the
//! last good list when the registry is down.
//!
//! [`DiscoveryClient::discover`] answers from the cache ([`cache`]) when it can; a miss asks the
//! registry (with retries per [`RetryPolicy`]) and caches the answer. A background task refreshes
//! every cached service in use each `refresh_interval`; a service nobody read or watched within
//! the cache's `ttl` leaves the cache instead ([`CacheConfig::ttl`]). The rules of stale-on-error:
//!
//! - a registry error, a timeout or a lost watch never replaces a list; the last good list keeps
//!   being served, marked [`Snapshot::is_stale`];
//! - an answer from a healthy registry that a service has no instances is honoured (services do
//!   scale to zero), so clients stop calling instances that are gone;
//! - with [`CacheConfig::last_known_good`] set, each service's last good list is also kept in a
//!   file ([`last_good`]), and a process that starts while the registry cannot answer serves
//!   that list, marked stale, until the first live answer replaces it;
//! - with a restart grace in the client's [`OutagePolicy`] (`docs/DESIGN.md` §4), a registry
//!   that comes back from a failure without part of its instances is not believed at once: its
//!   watches and its cache keep those instances for the grace, then drop the ones that did not
//!   come back.
//!
//! Many consumers of one service (an xDS server's streams, a proxy's connections) share one
//! registry watch per service through [`shared`].

pub mod cache;
mod health;
pub mod last_good;
mod probe;
pub mod shared;
mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;

pub use crate::registry::outage::OutagePolicy;
pub use crate::snapshot::Snapshot;
pub use cache::{CacheConfig, CacheStats};
pub use last_good::LastKnownGood;
pub use shared::Shared;
pub use watch::Watcher;

use crate::error::{Error, Result};
use crate::instance::{Filter, HealthStatus, Instance, validate_name};
use crate::registry::Registry;
use crate::retry::RetryPolicy;
use crate::util::{AbortOnDrop, lock};
use cache::Cache;

/// A callback told about every discovery request: service, duration, and the outcome.
pub type RequestHook = Arc<dyn Fn(&str, Duration, Result<(), &Error>) + Send + Sync>;

/// Finds service instances through a [`Registry`], with a cache in front.
#[derive(Clone)]
pub struct DiscoveryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DiscoveryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryClient")
            .field("registry", &self.inner.registry.backend())
            .field("cache", &self.inner.cache.config)
            .field("retry", &self.inner.retry)
            .field("outage", &self.inner.outage)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) cache: Cache,
    pub(crate) retry: RetryPolicy,
    pub(crate) outage: OutagePolicy,
    /// What the registry probe saw (with a restart grace).
    pub(crate) outages: probe::Outages,
    request_timeout: Duration,
    hooks: ArcSwap<Vec<RequestHook>>,
    has_hooks: AtomicBool,
    /// The background refresher, stopped when the last clone of the client goes.
    refresher: Mutex<Option<AbortOnDrop>>,
    /// Serialises cold misses so one service is fetched once, not once per waiting caller.
    miss: tokio::sync::Mutex<()>,
}

/// Outcome of [`DiscoveryClient::warm_up`] for one service.
#[derive(Debug)]
pub struct WarmUp {
    /// Service name.
    pub service: String,
    /// Instance count, or why the service could not be loaded.
    pub result: Result<usize>,
}

/// Builds a [`DiscoveryClient`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    cache: CacheConfig,
    retry: RetryPolicy,
    outage: OutagePolicy,
    request_timeout: Duration,
}

impl ClientBuilder {
    /// Cache settings.
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// Retry settings for registry calls.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// What to believe of a registry that comes back from a failure (default: a resync is
    /// believed as it is; see [`OutagePolicy`]).
    pub fn outage(mut self, outage: OutagePolicy) -> Self {
        self.outage = outage;
        self
    }

    /// Deadline of one registry call (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The client.
    pub fn build(self, registry: Arc<dyn Registry>) -> DiscoveryClient {
        DiscoveryClient {
            inner: Arc::new(Inner {
                registry,
                cache: Cache::new(self.cache, self.outage.restart_grace),
                retry: self.retry,
                outage: self.outage,
                outages: probe::Outages::new(),
                request_timeout: self.request_timeout,
                hooks: ArcSwap::from_pointee(Vec::new()),
                has_hooks: AtomicBool::new(false),
                refresher: Mutex::new(None),
                miss: tokio::sync::Mutex::new(()),
            }),
        }
    }
}

impl DiscoveryClient {
    /// A client with the Go sketch's default cache and retry settings.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Self::builder().build(registry)
    }

    /// A builder for other settings.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            cache: CacheConfig::default(),
            retry: RetryPolicy::default(),
            outage: OutagePolicy::default(),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The registry behind this client.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    /// The client's outage policy.
    pub fn outage(&self) -> &OutagePolicy {
        &self.inner.outage
    }

    /// All instances of `service`. From the cache when it holds the service (no lock, no
    /// allocation); else from the registry, with retries, and cached.
    ///
    /// An empty snapshot means the registry says the service has no instances. An error means
    /// the registry could not be asked and nothing was cached yet.
    pub fn discover<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Future<Output = Result<Snapshot>> + Send + 'a {
        // The hit is looked up before the future exists, so awaiting a hit costs no more than
        // `cached` plus a ready future.
        let hit = if self.inner.has_hooks.load(Ordering::Relaxed) {
            None
        } else {
            self.inner.cache.get(service)
        };
        async move {
            match hit {
                Some(snap) => Ok(snap),
                None => Box::pin(self.discover_hooked(service)).await,
            }
        }
    }

    async fn discover_hooked(&self, service: &str) -> Result<Snapshot> {
        if !self.inner.has_hooks.load(Ordering::Relaxed) {
            return self.discover_inner(service).await;
        }
        let start = tokio::time::Instant::now();
        let result = self.discover_inner(service).await;
        let elapsed = start.elapsed();
        for hook in self.inner.hooks.load().iter() {
            hook(service, elapsed, result.as_ref().map(|_| ()));
        }
        result
    }

    /// Only the cache: the snapshot of `service` if it is cached. Never waits.
    #[inline]
    pub fn cached(&self, service: &str) -> Option<Snapshot> {
        self.inner.cache.get(service)
    }

    async fn discover_inner(&self, service: &str) -> Result<Snapshot> {
        if let Some(snap) = self.inner.cache.get(service) {
            return Ok(snap);
        }
        self.miss(service).await
    }

    async fn miss(&self, service: &str) -> Result<Snapshot> {
        validate_name("service name", service)?;
        self.inner.cache.record_miss();
        self.ensure_refresher();
        let _one_at_a_time = self.inner.miss.lock().await;
        if let Some(snap) = self.inner.cache.get(service) {
            return Ok(snap);
        }
        match self.inner.retry.run(|| self.inner.fetch(service)).await {
            Ok(list) => Ok(self.inner.cache.store(service, list)),
            Err(e) => self.inner.last_good_or(service, e).await,
        }
    }

    /// The instances of `service` that pass `filter`.
    pub async fn discover_with_filter(
        &self,
        service: &str,
        filter: &Filter,
    ) -> Result<Vec<Instance>> {
        let snap = self.discover(service).await?;
        Ok(filter.apply(snap.instances()))
    }

    /// Asks the registry now (one attempt) and updates the cache. On failure the cached list is
    /// kept, marked stale, and returned if there is one.
    pub async fn refresh(&self, service: &str) -> Result<Snapshot> {
        validate_name("service name", service)?;
        // What this caches is kept fresh like every other entry.
        self.ensure_refresher();
        let snap = self.inner.refresh(service).await;
        // Asked for: in use, as a read is.
        self.inner.cache.touch(service);
        snap
    }

    /// Loads `services` into the cache concurrently, so the first requests do not wait.
    pub async fn warm_up<S: AsRef<str>>(&self, services: &[S]) -> Vec<WarmUp> {
        join_all(services.iter().map(|s| async move {
            let service = s.as_ref().to_owned();
            let result = self.discover(&service).await.map(|snap| snap.len());
            WarmUp { service, result }
        }))
        .await
    }

    /// Watches `service`: a [`Watcher`] that yields `Reset` first, then changes, with errors in
    /// line; it reconnects with backoff on its own, resyncing with a `Reset`. Events also update
    /// the cache. Each call opens a registry watch of its own; [`Shared`] shares one per service
    /// among many subscribers.
    pub async fn watch(&self, service: &str) -> Result<Watcher> {
        validate_name("service name", service)?;
        Ok(watch::spawn(self.inner.clone(), service.to_owned()))
    }

    /// Registers a callback for every discovery request (the Go sketch's `OnRequest`).
    pub fn on_request<F>(&self, hook: F)
    where
        F: Fn(&str, Duration, Result<(), &Error>) + Send + Sync + 'static,
    {
        let mut hooks: Vec<RequestHook> = (**self.inner.hooks.load()).clone();
        hooks.push(Arc::new(hook));
        self.inner.hooks.store(Arc::new(hooks));
        self.inner.has_hooks.store(true, Ordering::Relaxed);
    }

    /// Lays a health status from chi's own checks (active or passive) over the registry's view of
    /// one instance: `healthy_only` filters and balancers see it at once, and it survives refreshes
    /// until cleared with `None`.
    pub fn set_health(&self, service: &str, id: &str, health: Option<HealthStatus>) {
        self.inner.cache.set_health(service, id, health);
    }

    /// Cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The cached snapshot of `service` without counting a read: for metrics, which must not
    /// keep a service in use (nor count cache hits).
    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    pub(crate) fn peek(&self, service: &str) -> Option<Snapshot> {
        self.inner.cache.peek(service)
    }

    /// Names of the services in the cache.
    pub fn cached_services(&self) -> Vec<String> {
        self.inner.cache.names()
    }

    /// The last-known-good file of `service`, when the cache keeps them
    /// ([`CacheConfig::last_known_good`]); it may not exist yet. Written by a thread of its own
    /// shortly after each changed list.
    pub fn last_known_good_path(&self, service: &str) -> Option<PathBuf> {
        let store = self.inner.cache.last_good.as_ref()?;
        Some(store.config().path(service))
    }

    /// Drops `service` from the cache (its last-known-good file, if any, stays).
    pub fn forget(&self, service: &str) {
        self.inner.cache.remove(service);
    }

    fn ensure_refresher(&self) {
        let mut slot = lock(&self.inner.refresher);
        if slot.is_some() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let period = self
            .inner
            .cache
            .config
            .refresh_interval
            .max(Duration::from_millis(10));
        *slot = Some(AbortOnDrop::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.refresh_all().await;
            }
        }));
    }
}

impl Inner {
    /// One registry call with the client's deadline.
    pub(crate) async fn fetch(&self, service: &str) -> Result<Vec<Instance>> {
        match tokio::time::timeout(self.request_timeout, self.registry.instances(service)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                backend: self.registry.backend().to_owned(),
                after: self.request_timeout,
            }),
        }
    }

    /// The first discover of `service` failed with `error`: when the registry could not answer
    /// (a transient error) and the last-known-good file of the service passes its checks, its
    /// list is cached and served marked stale; otherwise `error`.
    async fn last_good_or(&self, service: &str, error: Error) -> Result<Snapshot> {
        let Some(store) = self.cache.last_good.clone() else {
            return Err(error);
        };
        if !error.is_transient() {
            return Err(error);
        }
        let name = service.to_owned();
        let loaded = match tokio::task::spawn_blocking(move || store.load(&name)).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) | Err(_) => return Err(error),
        };
        tracing::warn!(
            %service,
            error = %error,
            written_at = %loaded.written_at,
            instances = loaded.instances.len(),
            "the registry cannot answer; serving the last-known-good list from disk, marked stale"
        );
        Ok(self.cache.restore(service, loaded.instances))
    }

    async fn refresh(&self, service: &str) -> Result<Snapshot> {
        match self.fetch(service).await {
            Ok(list) => {
                self.cache
                    .counters
                    .refreshes
                    .fetch_add(1, Ordering::Relaxed);
                Ok(self.cache.store(service, list))
            }
            Err(e) => {
                self.cache
                    .counters
                    .refresh_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%service, error = %e, "refresh failed; serving the last good list");
                self.cache.failed(service);
                match self.cache.entry(service) {
                    Some(entry) => Ok(entry.load()),
                    None => Err(e),
                }
            }
        }
    }

    /// One round of the refresher: the services unused for the TTL leave, the others are
    /// refreshed, graces that are over end, and lists not refreshed within the TTL are marked
    /// stale.
    async fn refresh_all(&self) {
        let names = self.cache.sweep(tokio::time::Instant::now());
        join_all(names.iter().map(|n| self.refresh(n))).await;
        let now = tokio::time::Instant::now();
        self.cache.settle(now);
        self.cache.mark_stale_past_ttl(now);
    }
}

#[cfg(test)]
mod tests;
