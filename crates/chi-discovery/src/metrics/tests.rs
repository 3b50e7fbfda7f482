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
        .register(&Instance::new("user-service", "10.0.0.1", 80).with_health(HealthStatus::Healthy))
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

/// A backend that is down: every call fails.
struct Down;

#[async_trait::async_trait]
impl crate::Registry for Down {
    fn backend(&self) -> &str {
        "down"
    }
    async fn register(&self, _: &Instance) -> Result<()> {
        Err(self.err())
    }
    async fn deregister(&self, _: &str, _: &str) -> Result<()> {
        Err(self.err())
    }
    async fn keep_alive(&self, _: &Instance, _: HealthStatus) -> Result<crate::Liveness> {
        Err(self.err())
    }
    async fn instances(&self, _: &str) -> Result<Vec<Instance>> {
        Err(self.err())
    }
    async fn services(&self) -> Result<Vec<String>> {
        Err(self.err())
    }
    async fn watch(&self, _: &str) -> Result<crate::registry::WatchStream> {
        Err(self.err())
    }
}

impl Down {
    fn err(&self) -> Error {
        Error::Unavailable {
            backend: "down".into(),
            message: "switched off".into(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn registration_state_per_backend() {
    let multi = crate::registry::MultiRegistry::new(vec![Arc::new(Memory::new()), Arc::new(Down)]);
    let manager =
        Arc::new(ServiceManager::new(Arc::new(multi)).with_interval(Duration::from_secs(3600)));
    let report = manager
        .register(ServiceConfig::new("user-service", "10.0.0.1", 8080))
        .await
        .expect("register");
    assert!(!report.is_complete());
    let mut registry = Registry::default();
    let m = Metrics::register(&mut registry, MetricsConfig::default());
    let mgr = manager.clone();
    m.register_registrations(&mut registry, move || mgr.status());
    let s = scrape(&registry);
    let labels = |backend| {
        [
            ("service", "user-service"),
            ("instance", "user-service-10.0.0.1-8080"),
            ("backend", backend),
        ]
    };
    for (backend, up, errors) in [("memory", 1.0, 0.0), ("down", 0.0, 1.0)] {
        let labels = labels(backend);
        assert_eq!(value(&s, "chi_registration_registered", &labels), Some(up));
        assert_eq!(value(&s, "chi_registration_backend_up", &labels), Some(up));
        assert_eq!(
            value(&s, "chi_registration_failures", &labels),
            Some(errors)
        );
        assert_eq!(
            value(&s, "chi_registration_errors_total", &labels),
            Some(errors)
        );
        assert_eq!(
            value(&s, "chi_registration_reregistrations_total", &labels),
            Some(0.0)
        );
    }
    // A second failed attempt, once the backoff allows it: one more error, two in a row.
    tokio::time::sleep(Duration::from_secs(15)).await;
    manager.tick().await;
    let s = scrape(&registry);
    assert_eq!(
        value(&s, "chi_registration_errors_total", &labels("down")),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "chi_registration_failures", &labels("down")),
        Some(2.0)
    );
}
