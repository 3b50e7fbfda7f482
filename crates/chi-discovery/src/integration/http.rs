//! An HTTP client that calls services by name: `http://user-service/users/42`.
//!
//! [`HttpRouter`] resolves the URL's host as a service name through discovery (the cache, so
//! no registry round trip per request), the [`Smart`] router (version, region, balancer, from
//! the request's `X-Service-Version` / `X-Client-Region` / `X-Client-Zone` headers, and the key
//! of the hashing strategies from `X-Hash-Key` or the header [`HttpRouter::hash_key_header`]
//! names, or from [`HttpRouter::get_with_key`]), and rewrites the URL to the picked instance's
//! `address:port`. Every pick is told to the router's [`OnPick`] (a [`Chi`](crate::Chi)
//! stack's metrics). The outcome of each call is reported to the
//! service's [`OutlierDetector`] (a 5xx or a transport error is a failure), and ejected instances
//! are skipped by the next picks: passive health without any code in the caller. The router and
//! the detector of a service are one [`ServiceState`], as in `chi proxy`.
//!
//! It wraps a `reqwest::Client` rather than being a `tower::Layer` because the name-to-address
//! step must happen per request *before* a connection is chosen, which is exactly what a URL
//! rewrite in front of reqwest's own pool does; for tower/tonic stacks use
//! [`Discover`](super::Discover) instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::balance::Balancer;
use crate::discovery::DiscoveryClient;
use crate::error::Error;
use crate::health::{OutlierConfig, OutlierDetector};
use crate::instance::Instance;
use crate::routing::{
    Admitted, HASH_KEY_HEADER, OnPick, Route, Routed, ServiceState, ServiceStateConfig, Slot,
    Smart, Stage,
};

/// Why a call through [`HttpRouter`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL is not `http(s)://service-name/...`.
    #[error("not a service URL: {0}")]
    Url(String),
    /// Discovery failed or found no instance.
    #[error(transparent)]
    Discovery(#[from] Error),
    /// The call itself failed (connect, timeout...). Reported to outlier detection.
    #[error("request to {instance} failed: {source}")]
    Request {
        /// The instance called.
        instance: String,
        /// The error.
        source: reqwest::Error,
    },
}

/// Calls services by name; see the module docs.
pub struct HttpRouter<B: Stage = Balancer> {
    discovery: DiscoveryClient,
    http: reqwest::Client,
    make: Box<dyn Fn() -> Smart<B> + Send + Sync>,
    config: ServiceStateConfig,
    /// The header whose value is a request's hash key.
    key_header: http::HeaderName,
    on_pick: OnPick<B>,
    services: Mutex<HashMap<String, Arc<ServiceState<B>>>>,
}

impl<B: Stage> std::fmt::Debug for HttpRouter<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRouter")
            .field("outliers", &self.config.outliers)
            .finish_non_exhaustive()
    }
}

/// A resolved call target: the rewritten URL and the routed pick.
#[derive(Debug)]
pub struct Resolved<B: Stage = Balancer> {
    /// The URL with the instance's address in place of the service name.
    pub url: reqwest::Url,
    /// The pick (instance, decision, balancer guard).
    pub routed: Routed<B>,
    outliers: Arc<OutlierDetector>,
    /// The circuit breaker's slot of the instance, held until the call ends.
    _slot: Option<Slot>,
}

impl<B: Stage> Resolved<B> {
    /// The instance to call.
    pub fn instance(&self) -> &Instance {
        self.routed.instance()
    }

    /// Reports the outcome to outlier detection.
    pub fn report(&self, success: bool) {
        self.outliers.record(&self.instance().id, success);
    }

    /// Hands the response's load report (`endpoint-load-metrics`) to the balancer that picked,
    /// when it weighs by reports (`orca_weighted_round_robin`; feature `orca`). True when one
    /// was taken.
    #[cfg(feature = "orca")]
    pub fn report_load(&self, headers: &http::HeaderMap) -> bool {
        self.routed
            .load_reports()
            .is_some_and(|r| crate::orca::feed_to(headers, &**r, &self.instance().id))
    }
}

impl<B: Stage> HttpRouter<B> {
    /// A router over `discovery`; `make` builds one [`Smart`] router per service (e.g.
    /// `move || Smart::from_config(&routing, || Balancer::new(Strategy::P2c))`).
    pub fn new(
        discovery: DiscoveryClient,
        http: reqwest::Client,
        outliers: OutlierConfig,
        make: impl Fn() -> Smart<B> + Send + Sync + 'static,
    ) -> Self {
        HttpRouter {
            discovery,
            http,
            make: Box::new(make),
            config: ServiceStateConfig {
                outliers,
                max_requests_per_instance: None,
            },
            key_header: http::HeaderName::from_static(HASH_KEY_HEADER),
            on_pick: OnPick::new(),
            services: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the hash key of [`HttpRouter::get`]'s requests from header `name` instead of
    /// `X-Hash-Key` (the config's `load_balancer.hash_key_header`).
    pub fn hash_key_header(mut self, name: http::HeaderName) -> Self {
        self.key_header = name;
        self
    }

    /// Tells `on_pick` every pick (for the services first called after this).
    pub fn on_pick(mut self, on_pick: OnPick<B>) -> Self {
        self.on_pick = on_pick;
        self
    }

    /// Circuit breaking: at most `max_requests` calls in flight to one instance; past it a call
    /// goes to another instance, or fails at once with [`Error::Overloaded`] when all are at
    /// the bound (the config's `load_balancer.circuit_breaker.max_requests`).
    pub fn circuit_breaker(mut self, max_requests: u32) -> Self {
        self.config.max_requests_per_instance = Some(max_requests.max(1));
        self
    }

    /// Calls refused by the circuit breaker for `service`, once it was called.
    pub fn overflows(&self, service: &str) -> u64 {
        self.lock()
            .get(service)
            .and_then(|s| s.breaker().map(crate::routing::Breaker::overflows))
            .unwrap_or(0)
    }

    /// Calls refused by the circuit breaker, per service called so far (none without a
    /// breaker): what `Metrics::register_overflows` (feature `metrics`) reads at scrape.
    pub fn overflow_counts(&self) -> Vec<(String, u64)> {
        self.lock()
            .iter()
            .filter_map(|(name, s)| s.breaker().map(|b| (name.clone(), b.overflows())))
            .collect()
    }

    /// The outlier detector of `service`, once it was called.
    pub fn outliers(&self, service: &str) -> Option<Arc<OutlierDetector>> {
        self.lock().get(service).map(|s| s.outliers().clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ServiceState<B>>>> {
        crate::util::lock(&self.services)
    }

    fn per_service(&self, service: &str) -> Arc<ServiceState<B>> {
        let mut map = self.lock();
        if let Some(s) = map.get(service) {
            return s.clone();
        }
        let s =
            Arc::new(ServiceState::new((self.make)(), &self.config).on_pick(self.on_pick.clone()));
        map.insert(service.to_owned(), s.clone());
        s
    }

    /// Resolves `url` (`http://service/path`) for a request described by `route`.
    pub async fn resolve(&self, url: &str, route: &Route<'_>) -> Result<Resolved<B>, HttpError> {
        let mut url =
            reqwest::Url::parse(url).map_err(|e| HttpError::Url(format!("{url}: {e}")))?;
        let service = url
            .host_str()
            .ok_or_else(|| HttpError::Url(format!("{url}: no host")))?
            .to_owned();
        let snapshot = self.discovery.discover(&service).await?;
        let per = self.per_service(&service);
        let Admitted { routed, slot } = per.admit(&snapshot, route, &service)?;
        let outliers = per.outliers().clone();
        let instance = routed.instance();
        let moved = url
            .set_host(Some(&instance.address))
            .map_err(|e| HttpError::Url(format!("instance address {}: {e}", instance.address)))
            .and_then(|()| {
                url.set_port(Some(instance.port))
                    .map_err(|()| HttpError::Url(format!("{url}: cannot carry a port")))
            });
        moved?;
        Ok(Resolved {
            url,
            routed,
            outliers,
            _slot: slot,
        })
    }

    /// GETs `url` by service name, routing by the routing headers in `headers` (which are also
    /// sent) and hashing by the value of the hash key header (`X-Hash-Key` unless
    /// [`HttpRouter::hash_key_header`] names another), and reports the outcome: a 5xx or a
    /// transport error counts as a failure.
    pub async fn get(
        &self,
        url: &str,
        headers: &http::HeaderMap,
    ) -> Result<reqwest::Response, HttpError> {
        let route = Route::from_headers_keyed(headers, self.key_header.as_str());
        self.send(url, headers, &route).await
    }

    /// [`HttpRouter::get`] with `key` as the hash key (whatever the headers say): the same key
    /// goes to the same instance under `consistent_hash`, `ring_hash` and `maglev`.
    pub async fn get_with_key(
        &self,
        url: &str,
        headers: &http::HeaderMap,
        key: &[u8],
    ) -> Result<reqwest::Response, HttpError> {
        let route = Route::from_headers_keyed(headers, self.key_header.as_str()).key(key);
        self.send(url, headers, &route).await
    }

    async fn send(
        &self,
        url: &str,
        headers: &http::HeaderMap,
        route: &Route<'_>,
    ) -> Result<reqwest::Response, HttpError> {
        let target = self.resolve(url, route).await?;
        let result = self
            .http
            .get(target.url.clone())
            .headers(headers.clone())
            .send()
            .await;
        match result {
            Ok(response) => {
                target.report(!response.status().is_server_error());
                #[cfg(feature = "orca")]
                target.report_load(response.headers());
                Ok(response)
            }
            Err(source) => {
                target.report(false);
                Err(HttpError::Request {
                    instance: target.instance().id.clone(),
                    source,
                })
            }
        }
    }
}
