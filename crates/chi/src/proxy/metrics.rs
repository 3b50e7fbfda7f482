//! The proxy's metrics: its own families (requests, attempts and latency by service) beside the
//! library's discovery and selection metrics, all on the admin port's `/metrics`.
//!
//! The families are registered once at start; each service gets its handles once
//! ([`ProxyMetrics::service`]), so a request increments counters without building labels.

use std::sync::Arc;

use chi_discovery::DiscoveryClient;
use chi_discovery::metrics::{Metrics as LibraryMetrics, MetricsConfig};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::admin;

type Labels = Vec<(String, String)>;

/// The metric families of the proxy, and the library's metrics.
pub(super) struct ProxyMetrics {
    requests: Family<Labels, Counter>,
    attempts: Family<Labels, Counter>,
    latency: Family<Labels, Histogram, fn() -> Histogram>,
    overflows: Family<Labels, Counter>,
    /// The library's metrics (for the per-instance selection counters).
    pub(super) library: LibraryMetrics,
}

/// The metric handles of one service, made once (no label allocation per request).
pub(super) struct ServiceMetrics {
    pub(super) attempt_ok: Counter,
    pub(super) attempt_failed: Counter,
    /// Requests by status class, 1xx to 5xx.
    pub(super) by_class: [Counter; 5],
    pub(super) latency: Histogram,
    /// Requests refused by the circuit breaker.
    pub(super) overflows: Counter,
}

impl ProxyMetrics {
    /// Registers the proxy's families and the library's metrics (the client's too); returns them
    /// with the text exposition for the admin port.
    /// The library's selection counters are labelled as `config` (the config file's `metrics`
    /// block) says.
    pub(super) fn register(
        client: &DiscoveryClient,
        config: MetricsConfig,
        refusals: &crate::limits::Refusals,
    ) -> (ProxyMetrics, admin::MetricsFn) {
        let mut registry = Registry::default();
        refusals.register(&mut registry);
        let requests = Family::<Labels, Counter>::default();
        let attempts = Family::<Labels, Counter>::default();
        let latency = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "chi_proxy_requests",
            "Requests by service and status class",
            requests.clone(),
        );
        registry.register(
            "chi_proxy_attempts",
            "Upstream attempts by service and outcome",
            attempts.clone(),
        );
        registry.register(
            "chi_proxy_request_duration_seconds",
            "Time from request to response head, retries included",
            latency.clone(),
        );
        let overflows = Family::<Labels, Counter>::default();
        registry.register(
            "chi_proxy_circuit_breaker_overflows",
            "Requests refused because every instance they could go to had load_balancer.circuit_breaker.max_requests in flight",
            overflows.clone(),
        );
        // The library's metrics too: discovery and selection metrics, cache and instances.
        let library = LibraryMetrics::register(&mut registry, config);
        library.instrument_client(&mut registry, client);
        let registry = Arc::new(registry);
        let render: admin::MetricsFn = Arc::new(move || {
            let mut out = String::new();
            if encode(&mut out, &registry).is_err() {
                out.clear();
            }
            out
        });
        let metrics = ProxyMetrics {
            requests,
            attempts,
            latency,
            overflows,
            library,
        };
        (metrics, render)
    }

    /// The handles of service `name`.
    pub(super) fn service(&self, name: &str) -> ServiceMetrics {
        let label = |k: &str, v: &str| {
            vec![
                ("service".to_owned(), name.to_owned()),
                (k.to_owned(), v.to_owned()),
            ]
        };
        // One statement per handle: a family's read guard must be gone before the next
        // `get_or_create` of the same family may need its write lock.
        let attempt_ok = self
            .attempts
            .get_or_create(&label("outcome", "success"))
            .clone();
        let attempt_failed = self
            .attempts
            .get_or_create(&label("outcome", "failure"))
            .clone();
        let mut by_class: [Counter; 5] = Default::default();
        for (slot, c) in by_class.iter_mut().zip(["1xx", "2xx", "3xx", "4xx", "5xx"]) {
            let counter = self.requests.get_or_create(&label("code", c)).clone();
            *slot = counter;
        }
        let latency = self
            .latency
            .get_or_create(&vec![("service".to_owned(), name.to_owned())])
            .clone();
        let overflows = self
            .overflows
            .get_or_create(&vec![("service".to_owned(), name.to_owned())])
            .clone();
        ServiceMetrics {
            attempt_ok,
            attempt_failed,
            by_class,
            latency,
            overflows,
        }
    }
}
