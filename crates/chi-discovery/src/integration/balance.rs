//! A tower `Service` whose every request goes to the instance chi picks for it: [`Balance`].
//!
//! [`Discover`](super::Discover) hands chi's instances to tower's own balancer
//! (`tower::balance::p2c`) or to tonic's `Channel::balance_channel`, which pick by their own rule
//! (P2C over readiness): the configured strategy, routing by version and region, hash keys and
//! chi's selection metrics do not reach them. [`Balance`] is the other way round, as
//! [`HttpRouter`](super::HttpRouter) is for reqwest: one `tower::Service<http::Request<B>>` per
//! service name, and per request
//!
//! 1. the service's current snapshot from discovery (the cache: no registry round trip);
//! 2. the route of the request: `X-Service-Version`, `X-Client-Region`, `X-Client-Zone`, and the
//!    key of the hashing strategies from `X-Hash-Key` (or the header the config's
//!    `load_balancer.hash_key_header` names), or from a [`HashKey`] request extension, which wins;
//! 3. a pick by the stack's [`Smart`](crate::routing::Smart) router and balancer, as
//!    [`ServiceState`] admits it (outlier ejections skipped, the circuit breaker's bound kept,
//!    unhealthy instances skipped unless `health_check_enabled: false`), told to the
//!    [`OnPick`] (the stack's metrics);
//! 4. the request sent by the picked instance's own service, made by the caller's closure the
//!    first time the instance is picked (a tonic `Channel`, a hyper client...) and kept while
//!    the instance keeps its address; its outcome (an error is a failure) feeds outlier
//!    detection.
//!
//! `poll_ready` is always ready: which instance serves a request is known only once the request
//! is, so the chosen instance's service is driven to readiness inside the call
//! ([`tower::ServiceExt::oneshot`]). The balancer's in-flight count and the breaker's slot are
//! held until the response head arrives.
//!
//! tonic's generated clients take it as their transport: [`Chi::grpc`](crate::Chi::grpc) is a
//! `Balance` over one lazily connected `Channel` per instance.
//!
//! With `orca_weighted_round_robin`, each request carries the picked instance's
//! [`LoadReporter`](crate::balance::LoadReporter) as an extension: an instance service wrapped in
//! `orca::FeedLayer::from_request()` (feature `orca`) hands the answer's load report (gRPC's
//! trailer, or the header) back to the balancer.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tower::ServiceExt;

use crate::discovery::{DiscoveryClient, Snapshot};
use crate::instance::Instance;
#[cfg(doc)]
use crate::routing::OnPick;
use crate::routing::{Admitted, HASH_KEY_HEADER, Route, ServiceState};

/// The error of a [`Balance`] call: discovery's ([`Error`](crate::Error)), the closure's, or
/// the instance's service's.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request extension naming the hash key of the request, whatever its headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashKey(pub Vec<u8>);

type Make<S> = Box<dyn Fn(&Instance) -> Result<S, BoxError> + Send + Sync>;

/// A tower service over the instances of one service, each request picked by chi; see the
/// module docs.
pub struct Balance<S> {
    shared: Arc<Shared<S>>,
    /// The header whose value is a request's hash key.
    key_header: http::HeaderName,
}

struct Shared<S> {
    service: String,
    discovery: DiscoveryClient,
    state: ServiceState,
    make: Make<S>,
    endpoints: ArcSwap<Endpoints<S>>,
}

/// The services of the instances picked so far, for one snapshot revision.
struct Endpoints<S> {
    revision: u64,
    /// By instance id: the address and port the service calls, and the service.
    by_id: HashMap<String, (String, u16, S)>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Balance {
            shared: self.shared.clone(),
            key_header: self.key_header.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("service", &self.shared.service)
            .field("key_header", &self.key_header)
            .field("endpoints", &self.shared.endpoints.load().by_id.len())
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Balance<S> {
    /// Requests to `service` over `discovery`'s instances, picked by `state` (its router,
    /// outlier detection, circuit breaker and [`OnPick`]); `make` builds the service that calls
    /// one instance.
    pub fn new<E>(
        service: impl Into<String>,
        discovery: DiscoveryClient,
        state: ServiceState,
        make: impl Fn(&Instance) -> Result<S, E> + Send + Sync + 'static,
    ) -> Self
    where
        E: Into<BoxError>,
    {
        Balance {
            shared: Arc::new(Shared {
                service: service.into(),
                discovery,
                state,
                make: Box::new(move |i| make(i).map_err(Into::into)),
                endpoints: ArcSwap::from_pointee(Endpoints {
                    revision: u64::MAX,
                    by_id: HashMap::new(),
                }),
            }),
            key_header: http::HeaderName::from_static(HASH_KEY_HEADER),
        }
    }

    /// Reads the hash key from header `name` instead of `X-Hash-Key` (the config's
    /// `load_balancer.hash_key_header`).
    pub fn hash_key_header(mut self, name: http::HeaderName) -> Self {
        self.key_header = name;
        self
    }

    /// The service's routing state (router, outlier detector, breaker).
    pub fn state(&self) -> &ServiceState {
        &self.shared.state
    }

    /// The service of `instance`: the one made before while it keeps its address, else a new
    /// one. The map is remade when the snapshot revision moves, keeping the instances still
    /// there at the same address.
    fn endpoint(&self, snapshot: &Snapshot, instance: &Instance) -> Result<S, BoxError> {
        let shared = &self.shared;
        let current = shared.endpoints.load();
        let known = current
            .by_id
            .get(&instance.id)
            .filter(|(address, port, _)| *address == instance.address && *port == instance.port)
            .map(|(_, _, s)| s.clone());
        if current.revision == snapshot.revision()
            && let Some(service) = known
        {
            return Ok(service);
        }
        let service = match known {
            Some(s) => s,
            None => (shared.make)(instance)?,
        };
        shared.endpoints.rcu(|old| {
            let mut by_id = if old.revision == snapshot.revision() {
                old.by_id.clone()
            } else {
                let live: HashMap<&str, &Instance> = snapshot
                    .instances()
                    .iter()
                    .map(|i| (i.id.as_str(), i))
                    .collect();
                old.by_id
                    .iter()
                    .filter(|(id, (address, port, _))| {
                        live.get(id.as_str())
                            .is_some_and(|i| i.address == *address && i.port == *port)
                    })
                    .map(|(id, e)| (id.clone(), e.clone()))
                    .collect()
            };
            by_id.insert(
                instance.id.clone(),
                (instance.address.clone(), instance.port, service.clone()),
            );
            Endpoints {
                revision: snapshot.revision(),
                by_id,
            }
        });
        Ok(service)
    }
}

impl<S, B> tower::Service<http::Request<B>> for Balance<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let shared = &this.shared;
            let snapshot = shared.discovery.discover(&shared.service).await?;
            let (admitted, service) = {
                let mut route =
                    Route::from_headers_keyed(request.headers(), this.key_header.as_str());
                if let Some(HashKey(key)) = request.extensions().get::<HashKey>() {
                    route.key = Some(key);
                }
                let admitted: Admitted = shared.state.admit(&snapshot, &route, &shared.service)?;
                let service = this.endpoint(&snapshot, admitted.routed.instance())?;
                (admitted, service)
            };
            // `orca_weighted_round_robin`: where the answer's load report goes, for a
            // `FeedLayer::from_request` in the instance's service.
            if let Some(reports) = admitted.routed.load_reports() {
                let reporter = reports.reporter(&admitted.routed.instance().id);
                request.extensions_mut().insert(reporter);
            }
            let result = service.oneshot(request).await.map_err(Into::into);
            shared
                .state
                .record(&admitted.routed.instance().id, result.is_ok());
            result
        })
    }
}
