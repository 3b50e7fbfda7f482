//! Prometheus metrics (feature `metrics`).
//!
//! [`Metrics::register`] registers every metric into a
//! [`prometheus_client::registry::Registry`] the caller passes in (nothing global: two clients
//! in one process, or a test, never share series by accident), and the `instrument_*` / `follow_*` / `record_*` methods wire it to chi's hooks:
//!
//! | metric | type | labels | fed by |
//! | --- | --- | --- | --- |
//! | `service_discovery_requests_total` | counter | `service`, `status` (`success`/`error`) | [`DiscoveryClient::on_request`] |
//! | `service_discovery_request_duration_seconds` | histogram | `service` | [`DiscoveryClient::on_request`] |
//! | `load_balancer_selections_total` | counter | `service`, `instance`, `strategy` | [`Metrics::record_selection`] |
//! | `chi_routing_decisions_total` | counter | `service`, `version`, `geo`, `panic` | [`Metrics::record_route`] (or [`Metrics::record_routed`], which also records the selection) |
//! | `chi_discovery_cache_{hits,misses,stale_serves,refreshes,refresh_errors,evictions,expiries}_total` | counter | | [`DiscoveryClient::cache_stats`], read at scrape |
//! | `chi_discovery_cache_size` | gauge | | same |
//! | `chi_discovery_instances` | gauge | `service`, `health` | the cached snapshots, read at scrape |
//! | `chi_watch_events_total` | counter | `service`, `kind` (`reset`/`add`/`remove`/`update`) | [`Metrics::record_watch`] |
//! | `chi_watch_errors_total` | counter | `service` | [`Metrics::record_watch`] |
//! | `chi_health_check_transitions_total` | counter | `service`, `to` | [`HealthChecker::subscribe`], via [`Metrics::follow_health`] |
//! | `chi_registration_registered` | gauge (0/1) | `service`, `instance`, `backend` | [`ServiceManager::status`](crate::ServiceManager::status), read at scrape |
//! | `chi_registration_backend_up` | gauge (0/1) | `service`, `instance`, `backend` | same: registered and the last registration / keep-alive call succeeded |
//! | `chi_registration_failures` | gauge | `service`, `instance`, `backend` | same: failed calls in a row |
//! | `chi_registration_reregistrations_total` | counter | `service`, `instance`, `backend` | same: registered again after the backend lost it |
//! | `chi_registration_errors_total` | counter | `service`, `instance`, `backend` | same: failed registration / keep-alive calls |
//! | `chi_circuit_breaker_overflows_total` | counter | `service` | the circuit breakers' counts ([`Breaker::overflows`](crate::routing::Breaker::overflows)), read at scrape, via [`Metrics::register_overflows`] |
//!
//! The first three keep the Go sketch's names and labels. Values that already live in chi (cache
//! counters, the instance lists, registration state) are read when Prometheus scrapes, through
//! collectors, rather than copied into metrics on every change: nothing to keep in sync.
//!
//! **Cardinality.** The Go sketch's `instance` label is on by default. For large fleets
//! [`MetricsConfig::per_instance_labels`] `= false` (the config file's
//! `service_discovery.metrics.per_instance_labels: false`) drops the label (selections,
//! registration state are then summed per service), so the series count no longer grows with
//! instances.
//!
//! **Why `prometheus-client`** rather than the `prometheus` crate: it is the official Prometheus
//! project's Rust client, it speaks OpenMetrics, and its registry is a value the caller owns and
//! passes in (no process-global default registry to collide in), which is how chi wants metrics
//! wired; its families are typed label sets and its collectors run at scrape time, which is what
//! the read-at-scrape gauges above need.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod collectors;

use collectors::{ClientCollector, OverflowCollector, RegistrationCollector};

use crate::discovery::DiscoveryClient;
use crate::error::{Error, Result};
use crate::health::{HealthChecker, Transition};
use crate::manager::RegistrationStatus;
use crate::registry::Change;
use crate::routing::{Decision, Routed, Stage};

/// A label set: `(name, value)` pairs, so a label can be left out entirely.
type Labels = Vec<(&'static str, String)>;

/// Settings of [`Metrics`]: the config file's `metrics` block.
pub use crate::config::MetricsConfig;

struct Inner {
    config: MetricsConfig,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    selections: Family<Labels, Counter>,
    routes: Family<Labels, Counter>,
    watch_events: Family<Labels, Counter>,
    watch_errors: Family<Labels, Counter>,
    transitions: Family<Labels, Counter>,
}

/// chi's metrics; see the module docs. Cloning shares the metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn service(s: &str) -> Labels {
    vec![("service", s.to_owned())]
}

impl Metrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry, config: MetricsConfig) -> Self {
        let duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~16 s: a cache hit to a registry timeout.
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let inner = Inner {
            config,
            requests: Family::default(),
            duration,
            selections: Family::default(),
            routes: Family::default(),
            watch_events: Family::default(),
            watch_errors: Family::default(),
            transitions: Family::default(),
        };
        registry.register(
            "service_discovery_requests",
            "Total number of service discovery requests",
            inner.requests.clone(),
        );
        registry.register(
            "service_discovery_request_duration_seconds",
            "Service discovery request latency",
            inner.duration.clone(),
        );
        registry.register(
            "load_balancer_selections",
            "Total number of load balancer selections",
            inner.selections.clone(),
        );
        registry.register(
            "chi_routing_decisions",
            "Routing decisions by version and geo rule (fallbacks included)",
            inner.routes.clone(),
        );
        registry.register(
            "chi_watch_events",
            "Watch events received, by kind",
            inner.watch_events.clone(),
        );
        registry.register(
            "chi_watch_errors",
            "Watch errors (the watch reconnects and keeps the last list)",
            inner.watch_errors.clone(),
        );
        registry.register(
            "chi_health_check_transitions",
            "Health status changes decided by active checks",
            inner.transitions.clone(),
        );
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// The settings.
    pub fn config(&self) -> MetricsConfig {
        self.inner.config
    }

    /// Records one discovery request (what the [`DiscoveryClient::on_request`] hook calls).
    pub fn record_request(&self, service_name: &str, duration: Duration, ok: bool) {
        let status = if ok { "success" } else { "error" };
        let mut labels = service(service_name);
        labels.push(("status", status.to_owned()));
        self.inner.requests.get_or_create(&labels).inc();
        self.inner
            .duration
            .get_or_create(&service(service_name))
            .observe(duration.as_secs_f64());
    }

    /// Records a balancer's pick.
    pub fn record_selection(&self, service_name: &str, instance: &str, strategy: &str) {
        let mut labels = service(service_name);
        if self.inner.config.per_instance_labels {
            labels.push(("instance", instance.to_owned()));
        }
        labels.push(("strategy", strategy.to_owned()));
        self.inner.selections.get_or_create(&labels).inc();
    }

    /// The counter [`Metrics::record_selection`] increments for these labels, to keep and
    /// increment on a hot path instead (`record_selection` builds and looks up the labels on
    /// every call).
    pub fn selection_counter(&self, service_name: &str, instance: &str, strategy: &str) -> Counter {
        let mut labels = service(service_name);
        if self.inner.config.per_instance_labels {
            labels.push(("instance", instance.to_owned()));
        }
        labels.push(("strategy", strategy.to_owned()));
        self.inner.selections.get_or_create(&labels).clone()
    }

    /// Records which routing rules decided (see [`Decision`]).
    pub fn record_route(&self, service_name: &str, decision: &Decision) {
        let mut labels = service(service_name);
        labels.push(("version", decision.version.as_str().to_owned()));
        labels.push(("geo", decision.geo.as_str().to_owned()));
        labels.push(("panic", decision.panic.to_string()));
        self.inner.routes.get_or_create(&labels).inc();
    }

    /// Records a smart-router pick: its decision ([`Metrics::record_route`]) and the selection
    /// ([`Metrics::record_selection`]) with the balancer's strategy.
    pub fn record_routed<B: Stage>(&self, service_name: &str, routed: &Routed<B>) {
        self.record_route(service_name, &routed.decision());
        self.record_selection(service_name, &routed.instance().id, routed.strategy());
    }

    /// Records one item of a [`Watcher`](crate::Watcher): an event by kind, or an error.
    pub fn record_watch(&self, service_name: &str, item: &Result<Change>) {
        match item {
            Ok(change) => {
                let kind = match change {
                    Change::Reset(_) => "reset",
                    Change::Add(_) => "add",
                    Change::Remove(_) => "remove",
                    Change::Update(_) => "update",
                };
                let mut labels = service(service_name);
                labels.push(("kind", kind.to_owned()));
                self.inner.watch_events.get_or_create(&labels).inc();
            }
            Err(_) => {
                self.inner
                    .watch_errors
                    .get_or_create(&service(service_name))
                    .inc();
            }
        }
    }

    /// Records one health transition.
    pub fn record_transition(&self, t: &Transition) {
        let mut labels = service(&t.service);
        labels.push(("to", t.to.as_str().to_owned()));
        self.inner.transitions.get_or_create(&labels).inc();
    }

    /// Wires `client`: its requests feed the Go sketch's request counter and histogram (through
    /// [`DiscoveryClient::on_request`]), and a collector registered into `registry` reports its
    /// cache counters and the health of its cached instances at every scrape. Call once per
    /// client and registry (the collector's names would repeat).
    pub fn instrument_client(&self, registry: &mut Registry, client: &DiscoveryClient) {
        let me = self.clone();
        client.on_request(
            move |service, duration, result: std::result::Result<(), &Error>| {
                me.record_request(service, duration, result.is_ok());
            },
        );
        registry.register_collector(Box::new(ClientCollector {
            client: client.clone(),
        }));
    }

    /// Follows `checker`'s transitions in a task until the checker is dropped.
    pub fn follow_health(&self, checker: &HealthChecker) -> tokio::task::JoinHandle<()> {
        let mut rx = checker.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(t) => me.record_transition(&t),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "health metrics lagged behind transitions");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    }

    /// Registers a collector of registration state per backend; `status` is read at every
    /// scrape (typically `move || manager.status()` over an `Arc<ServiceManager>`).
    pub fn register_registrations<F>(&self, registry: &mut Registry, status: F)
    where
        F: Fn() -> Vec<RegistrationStatus> + Send + Sync + 'static,
    {
        registry.register_collector(Box::new(RegistrationCollector {
            status: Box::new(status),
            per_instance: self.inner.config.per_instance_labels,
        }));
    }

    /// Registers a collector of circuit-breaker refusals per service; `overflows` is read at
    /// every scrape (typically `move || http.overflow_counts()` over an `Arc<HttpRouter>`).
    pub fn register_overflows<F>(&self, registry: &mut Registry, overflows: F)
    where
        F: Fn() -> Vec<(String, u64)> + Send + Sync + 'static,
    {
        registry.register_collector(Box::new(OverflowCollector {
            overflows: Box::new(overflows),
        }));
    }
}

#[cfg(test)]
mod tests;
