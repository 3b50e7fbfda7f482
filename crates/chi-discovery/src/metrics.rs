//! Prometheus metrics (feature `metrics`).
//!
//! [`Metrics::register`] registers every metric into a
//! [`prometheus_client::registry::Registry`] the caller passes in (nothing global, DESIGN.md
//! §3.7), and the `instrument_*` / `follow_*` / `record_*` methods wire it to chi's hooks:
//!
//! | metric | type | labels | fed by |
//! | --- | --- | --- | --- |
//! | `service_discovery_requests_total` | counter | `service`, `status` (`success`/`error`) | [`DiscoveryClient::on_request`] |
//! | `service_discovery_request_duration_seconds` | histogram | `service` | [`DiscoveryClient::on_request`] |
//! | `load_balancer_selections_total` | counter | `service`, `instance`, `strategy` | [`Metrics::record_selection`] |
//! | `chi_routing_decisions_total` | counter | `service`, `version`, `geo`, `panic` | [`Metrics::record_route`] (or [`Metrics::record_routed`], which also records the selection) |
//! | `chi_discovery_cache_{hits,misses,stale_serves,refreshes,refresh_errors,evictions}_total` | counter | | [`DiscoveryClient::cache_stats`], read at scrape |
//! | `chi_discovery_cache_size` | gauge | | same |
//! | `chi_discovery_instances` | gauge | `service`, `health` | the cached snapshots, read at scrape |
//! | `chi_watch_events_total` | counter | `service`, `kind` (`reset`/`add`/`remove`/`update`) | [`Metrics::record_watch`] |
//! | `chi_watch_errors_total` | counter | `service` | [`Metrics::record_watch`] |
//! | `chi_health_check_transitions_total` | counter | `service`, `to` | [`HealthChecker::subscribe`], via [`Metrics::follow_health`] |
//! | `chi_registration_registered` | gauge (0/1) | `service`, `instance`, `backend` | [`ServiceManager::status`](crate::ServiceManager::status), read at scrape |
//! | `chi_registration_failures` | gauge | `service`, `instance`, `backend` | same |
//! | `chi_registration_reregistrations_total` | counter | `service`, `instance`, `backend` | same |
//!
//! The first three keep the spec's names and labels. Values that already live in chi (cache
//! counters, the instance lists, registration state) are read when Prometheus scrapes, through
//! collectors, rather than copied into metrics on every change: nothing to keep in sync.
//!
//! **Cardinality.** The spec's `instance` label is on by default. For large fleets
//! [`MetricsConfig::per_instance_labels`] `= false` drops the label (selections, registration
//! state are then summed per service), so the series count no longer grows with instances.
//!
//! **Why `prometheus-client`** rather than the `prometheus` crate: it is the official Prometheus
//! project's Rust client, it speaks OpenMetrics, and its registry is a value the caller owns and
//! passes in (no process-global default registry to collide in), which is how chi wants metrics
//! wired; its families are typed label sets and its collectors run at scrape time, which is what
//! the read-at-scrape gauges above need.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::discovery::DiscoveryClient;
use crate::error::{Error, Result};
use crate::health::{HealthChecker, Transition};
use crate::manager::RegistrationStatus;
use crate::registry::Change;
use crate::routing::{Decision, Routed, Stage};

/// A label set: `(name, value)` pairs, so a label can be left out entirely.
type Labels = Vec<(&'static str, String)>;

/// Settings of [`Metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Label selections and registration state by instance id (the spec's `instance` label).
    /// Default `true`; turn it off for large fleets.
    pub per_instance_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            per_instance_labels: true,
        }
    }
}

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

    /// Wires `client`: its requests feed the spec's request counter and histogram (through
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
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> fmt::Result {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

struct ClientCollector {
    client: DiscoveryClient,
}

impl fmt::Debug for ClientCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCollector").finish_non_exhaustive()
    }
}

impl Collector for ClientCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let s = self.client.cache_stats();
        for (name, help, v) in [
            (
                "chi_discovery_cache_hits",
                "Reads answered from the cache",
                s.hits,
            ),
            (
                "chi_discovery_cache_misses",
                "Reads that asked the registry",
                s.misses,
            ),
            (
                "chi_discovery_cache_stale_serves",
                "Reads answered with a stale list (registry unreachable)",
                s.stale_serves,
            ),
            (
                "chi_discovery_cache_refreshes",
                "Successful refreshes",
                s.refreshes,
            ),
            (
                "chi_discovery_cache_refresh_errors",
                "Failed refreshes (the last list was kept)",
                s.refresh_errors,
            ),
            (
                "chi_discovery_cache_evictions",
                "Services evicted",
                s.evictions,
            ),
        ] {
            counter(&mut encoder, name, help, &[(Vec::new(), v)])?;
        }
        gauge(
            &mut encoder,
            "chi_discovery_cache_size",
            "Services in the cache",
            &[(Vec::new(), i64::try_from(s.size).unwrap_or(i64::MAX))],
        )?;
        let mut names = self.client.cached_services();
        names.sort();
        let mut rows = Vec::new();
        for name in names {
            // `cached` counts as a cache hit; read the snapshot without it would need a new
            // hook, and a scrape's few hits are noise next to real traffic.
            let Some(snap) = self.client.cached(&name) else {
                continue;
            };
            let mut counts = [0i64; 3];
            for i in snap.instances() {
                counts[match i.health {
                    crate::HealthStatus::Healthy => 0,
                    crate::HealthStatus::Unhealthy => 1,
                    crate::HealthStatus::Unknown => 2,
                }] += 1;
            }
            for (h, c) in ["healthy", "unhealthy", "unknown"].iter().zip(counts) {
                let mut labels = service(&name);
                labels.push(("health", (*h).to_owned()));
                rows.push((labels, c));
            }
        }
        gauge(
            &mut encoder,
            "chi_discovery_instances",
            "Cached instances by health",
            &rows,
        )
    }
}

type StatusFn = Box<dyn Fn() -> Vec<RegistrationStatus> + Send + Sync>;

struct RegistrationCollector {
    status: StatusFn,
    per_instance: bool,
}

impl fmt::Debug for RegistrationCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationCollector")
            .field("per_instance", &self.per_instance)
            .finish_non_exhaustive()
    }
}

impl Collector for RegistrationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        // Aggregate by label set, so dropping the instance label sums instances.
        let mut rows: std::collections::BTreeMap<Labels, (i64, i64, u64)> = Default::default();
        for st in (self.status)() {
            for b in &st.backends {
                let mut labels = service(&st.instance.name);
                if self.per_instance {
                    labels.push(("instance", st.instance.id.clone()));
                }
                labels.push(("backend", b.backend.clone()));
                let row = rows.entry(labels).or_default();
                row.0 += i64::from(b.registered);
                row.1 += i64::from(b.failures);
                row.2 += b.reregistrations;
            }
        }
        let registered: Vec<_> = rows.iter().map(|(l, r)| (l.clone(), r.0)).collect();
        let failures: Vec<_> = rows.iter().map(|(l, r)| (l.clone(), r.1)).collect();
        let rereg: Vec<_> = rows.iter().map(|(l, r)| (l.clone(), r.2)).collect();
        gauge(
            &mut encoder,
            "chi_registration_registered",
            "1 when the backend holds the registration (summed per service without instance labels)",
            &registered,
        )?;
        gauge(
            &mut encoder,
            "chi_registration_failures",
            "Consecutive registration / keep-alive failures",
            &failures,
        )?;
        counter(
            &mut encoder,
            "chi_registration_reregistrations",
            "Registrations made again after the backend lost them",
            &rereg,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::instance::{HealthStatus, Instance, ServiceConfig};
    use crate::manager::ServiceManager;
    use crate::registry::{Memory, Registry as _};
    use crate::routing::{GeoStep, VersionStep};

    /// One sample of the text exposition: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// Parses the text format: skips comments, splits `name{k="v",...} value`.
    fn parse(text: &str) -> Vec<Sample> {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("value");
            let value: f64 = value.parse().expect("number");
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once("=\"").expect("label");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (n.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            out.push((name, labels, value));
        }
        out
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }

    fn scrape(registry: &Registry) -> Vec<Sample> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        parse(&text)
    }

    #[tokio::test]
    async fn spec_metrics_and_cache_collector() {
        let memory = Arc::new(Memory::new());
        memory
            .register(
                &Instance::new("user-service", "10.0.0.1", 80).with_health(HealthStatus::Healthy),
            )
            .await
            .expect("register");
        memory
            .register(
                &Instance::new("user-service", "10.0.0.2", 80).with_health(HealthStatus::Unhealthy),
            )
            .await
            .expect("register");
        let client = DiscoveryClient::new(memory);
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, MetricsConfig::default());
        metrics.instrument_client(&mut registry, &client);

        // One miss: an invalid name is refused before the cache is asked.
        client.discover("user-service").await.expect("miss");
        client.discover("user-service").await.expect("hit");
        assert!(client.discover("bad/name").await.is_err());

        let s = scrape(&registry);
        let ok = [("service", "user-service"), ("status", "success")];
        assert_eq!(
            value(&s, "service_discovery_requests_total", &ok),
            Some(2.0)
        );
        let err = [("service", "bad/name"), ("status", "error")];
        assert_eq!(
            value(&s, "service_discovery_requests_total", &err),
            Some(1.0)
        );
        let svc = [("service", "user-service")];
        assert_eq!(
            value(&s, "service_discovery_request_duration_seconds_count", &svc),
            Some(2.0)
        );
        assert!(value(&s, "service_discovery_request_duration_seconds_sum", &svc).is_some());
        assert_eq!(
            value(&s, "chi_discovery_cache_misses_total", &[]),
            Some(1.0)
        );
        assert!(value(&s, "chi_discovery_cache_hits_total", &[]).is_some_and(|v| v >= 1.0));
        assert_eq!(value(&s, "chi_discovery_cache_size", &[]), Some(1.0));
        let healthy = [("service", "user-service"), ("health", "healthy")];
        let unhealthy = [("service", "user-service"), ("health", "unhealthy")];
        assert_eq!(value(&s, "chi_discovery_instances", &healthy), Some(1.0));
        assert_eq!(value(&s, "chi_discovery_instances", &unhealthy), Some(1.0));
    }

    #[test]
    fn selections_drop_instance_labels_on_request() {
        for per_instance in [true, false] {
            let mut registry = Registry::default();
            let m = Metrics::register(
                &mut registry,
                MetricsConfig {
                    per_instance_labels: per_instance,
                },
            );
            for id in ["a", "b"] {
                m.record_selection("svc", id, "round_robin");
            }
            // A kept counter is the same series as `record_selection`'s.
            m.selection_counter("svc", "b", "round_robin").inc();
            let s = scrape(&registry);
            let rows: Vec<&Sample> = s
                .iter()
                .filter(|x| x.0 == "load_balancer_selections_total")
                .collect();
            if per_instance {
                let b = [
                    ("service", "svc"),
                    ("instance", "b"),
                    ("strategy", "round_robin"),
                ];
                assert_eq!(value(&s, "load_balancer_selections_total", &b), Some(2.0));
                assert_eq!(rows.len(), 2);
            } else {
                let all = [("service", "svc"), ("strategy", "round_robin")];
                assert_eq!(value(&s, "load_balancer_selections_total", &all), Some(3.0));
                assert_eq!(rows.len(), 1);
                assert!(rows.iter().all(|r| !r.1.contains_key("instance")));
            }
        }
    }

    #[test]
    fn routes_watch_events_and_transitions() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, MetricsConfig::default());
        let d = Decision {
            version: VersionStep::ToDefault,
            geo: GeoStep::ToNeighbour,
            panic: false,
        };
        m.record_route("svc", &d);
        m.record_watch("svc", &Ok(Change::Reset(vec![])));
        m.record_watch("svc", &Ok(Change::Add(Instance::new("svc", "h", 1))));
        m.record_watch("svc", &Ok(Change::Add(Instance::new("svc", "h", 2))));
        m.record_watch(
            "svc",
            &Err(Error::WatchClosed {
                service: "svc".into(),
                message: "x".into(),
            }),
        );
        m.record_transition(&Transition {
            service: "svc".into(),
            id: "a".into(),
            from: HealthStatus::Unknown,
            to: HealthStatus::Unhealthy,
            at: tokio::time::Instant::now(),
            reason: None,
        });
        let s = scrape(&registry);
        let route = [
            ("service", "svc"),
            ("version", "to_default"),
            ("geo", "to_neighbour"),
            ("panic", "false"),
        ];
        assert_eq!(value(&s, "chi_routing_decisions_total", &route), Some(1.0));
        assert_eq!(
            value(
                &s,
                "chi_watch_events_total",
                &[("service", "svc"), ("kind", "add")]
            ),
            Some(2.0)
        );
        assert_eq!(
            value(
                &s,
                "chi_watch_events_total",
                &[("service", "svc"), ("kind", "reset")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "chi_watch_errors_total", &[("service", "svc")]),
            Some(1.0)
        );
        let t = [("service", "svc"), ("to", "unhealthy")];
        assert_eq!(
            value(&s, "chi_health_check_transitions_total", &t),
            Some(1.0)
        );
    }

    #[test]
    fn a_routed_pick_records_decision_and_selection() {
        use crate::routing::{Geo, Route, Smart, Version};
        let snap = crate::snapshot::Snapshot::new(
            vec![
                Instance::new("svc", "h", 1)
                    .with_id("only")
                    .with_version("v1"),
            ],
            1,
        );
        let smart = Smart::new(Version::new("v1"), Geo::disabled(), || {
            |_: &[Instance], _: Option<&[u8]>| Some(0)
        });
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, MetricsConfig::default());
        let routed = smart
            .pick(&snap, &Route::new().version("v7"))
            .expect("pick");
        m.record_routed("svc", &routed);
        let s = scrape(&registry);
        let sel = [
            ("service", "svc"),
            ("instance", "only"),
            ("strategy", "custom"),
        ];
        assert_eq!(value(&s, "load_balancer_selections_total", &sel), Some(1.0));
        let route = [
            ("service", "svc"),
            ("version", "to_default"),
            ("geo", "disabled"),
            ("panic", "false"),
        ];
        assert_eq!(value(&s, "chi_routing_decisions_total", &route), Some(1.0));
    }

    #[tokio::test]
    async fn registration_state_per_backend() {
        let manager = Arc::new(ServiceManager::new(Arc::new(Memory::new())));
        manager
            .register(ServiceConfig::new("user-service", "10.0.0.1", 8080))
            .await
            .expect("register");
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, MetricsConfig::default());
        let mgr = manager.clone();
        m.register_registrations(&mut registry, move || mgr.status());
        let s = scrape(&registry);
        let labels = [
            ("service", "user-service"),
            ("instance", "user-service-10.0.0.1-8080"),
            ("backend", "memory"),
        ];
        assert_eq!(value(&s, "chi_registration_registered", &labels), Some(1.0));
        assert_eq!(value(&s, "chi_registration_failures", &labels), Some(0.0));
        assert_eq!(
            value(&s, "chi_registration_reregistrations_total", &labels),
            Some(0.0)
        );
        manager.shutdown().await;
    }
}
