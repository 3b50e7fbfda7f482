//! What the proxy keeps per service and per instance.
//!
//! Per service, the library's [`ServiceState`] (the router, the outlier detector and the snapshot
//! revision the detector last saw; `HttpRouter` uses the same type), plus what only a proxy
//! needs: a [`Target`] per instance, the instances it marked unhealthy in the discovery cache, and
//! its metric handles. Targets are remade when the snapshot revision moves, never per request, so
//! a request only reads them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use chi_discovery::balance::Balancer;
use chi_discovery::routing::ServiceState;
use chi_discovery::{HealthStatus, Instance, Snapshot};
use hyper::header::HeaderValue;
use prometheus_client::metrics::counter::Counter;

use super::Proxy;
use super::metrics::ServiceMetrics;
use super::upstream::Idle;
use crate::console::picks;
use crate::sync;

/// Per-service state of the proxy.
pub(super) struct Service {
    pub(super) name: String,
    /// Routing and passive health, as the library keeps them.
    pub(super) state: ServiceState<Balancer>,
    /// What the proxy keeps per instance (see [`Target`]), by id: remade when the snapshot
    /// revision changes, so a request only reads it.
    targets: ArcSwap<Targets>,
    /// Instances this proxy marked unhealthy in the discovery cache (ejected).
    pub(super) marked: Mutex<Vec<String>>,
    pub(super) metrics: ServiceMetrics,
}

type Targets = HashMap<String, Arc<Target>>;

/// One instance as the proxy calls it, made once, not per request: its `Host` header, its
/// kept-alive connections and its selection counter.
pub(super) struct Target {
    id: String,
    address: String,
    port: u16,
    pub(super) host: HeaderValue,
    /// The `X-Chi-Upstream` header of its answers (none when the id is not a header value).
    pub(super) upstream: Option<HeaderValue>,
    /// Kept-alive connections to it, per worker.
    pub(super) idle: Arc<Idle>,
    /// The library's `load_balancer_selections` counter of this instance.
    pub(super) selections: Counter,
    /// Its picks over the last minute, for the console.
    pub(super) picks: picks::Counter,
}

impl Target {
    /// True when this target calls `instance` (same id, address and port).
    fn serves(&self, instance: &Instance) -> bool {
        self.id == instance.id && self.port == instance.port && self.address == instance.address
    }
}

impl Proxy {
    /// The state of service `name`, made on its first request.
    pub(super) fn service(&self, name: &str) -> Arc<Service> {
        if let Some(s) = sync::read(&self.services).get(name) {
            return s.clone();
        }
        let mut map = sync::write(&self.services);
        if let Some(s) = map.get(name) {
            return s.clone();
        }
        let service = Arc::new(Service {
            name: name.to_owned(),
            state: ServiceState::new(self.routers.router(), &self.settings),
            targets: ArcSwap::default(),
            marked: Mutex::new(Vec::new()),
            metrics: self.metrics.service(name),
        });
        map.insert(name.to_owned(), service.clone());
        service
    }

    /// Reports an attempt's outcome to the metrics and the outlier detector; an instance the
    /// detector ejects is marked unhealthy in the discovery cache, so routing leaves it out.
    pub(super) fn record(&self, service: &Service, id: &str, success: bool) {
        if success {
            service.metrics.attempt_ok.inc();
        } else {
            service.metrics.attempt_failed.inc();
        }
        if service.state.record(id, success) {
            let name = service.name.as_str();
            tracing::warn!(
                service = name,
                id,
                "instance ejected after consecutive failures"
            );
            sync::lock(&service.marked).push(id.to_owned());
            self.client
                .set_health(name, id, Some(HealthStatus::Unhealthy));
        }
    }

    /// Tells the outlier detector the current instance set, and remakes the targets, when the
    /// snapshot changed: a target whose instance kept its address keeps its connections.
    pub(super) fn track(&self, service: &Service, snapshot: &Snapshot) {
        if !service.state.observe(snapshot) {
            return;
        }
        let old = service.targets.load_full();
        let targets: Targets = snapshot
            .instances()
            .iter()
            .filter_map(|i| {
                let target = match old.get(&i.id) {
                    Some(t) if t.serves(i) => t.clone(),
                    // A bad address is reported by the pick that meets it.
                    _ => Arc::new(self.new_target(service, i).ok()?),
                };
                Some((i.id.clone(), target))
            })
            .collect();
        service.targets.store(Arc::new(targets));
    }

    /// The [`Target`] of `instance`: found by id (and address, which an update may change), or
    /// made when the instance is newer than the targets (another worker is remaking them).
    pub(super) fn target_of(
        &self,
        service: &Service,
        instance: &Instance,
    ) -> Result<Arc<Target>, String> {
        if let Some(t) = service.targets.load().get(&instance.id)
            && t.serves(instance)
        {
            return Ok(t.clone());
        }
        let target = Arc::new(self.new_target(service, instance)?);
        service.targets.rcu(|targets| {
            let mut targets = Targets::clone(targets);
            targets.insert(instance.id.clone(), target.clone());
            targets
        });
        Ok(target)
    }

    fn new_target(&self, service: &Service, instance: &Instance) -> Result<Target, String> {
        let text = instance.authority();
        let host = HeaderValue::from_str(&text)
            .map_err(|e| format!("{}: bad upstream address {text:?}: {e}", instance.id))?;
        Ok(Target {
            id: instance.id.clone(),
            address: instance.address.clone(),
            port: instance.port,
            host,
            idle: Arc::new(Idle::new(self.workers)),
            upstream: HeaderValue::from_str(&instance.id).ok(),
            selections: self.metrics.library.selection_counter(
                &service.name,
                &instance.id,
                self.routers.strategy().as_str(),
            ),
            picks: self.picks.counter(&service.name, &instance.id),
        })
    }
}
