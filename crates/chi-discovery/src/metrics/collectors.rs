//! The collectors: metrics whose values already live in chi (the discovery cache's counters,
//! the cached instance lists, registration state) are read when Prometheus scrapes instead of
//! being copied into metrics on every change, so there is nothing to keep in sync.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{Labels, service};
use crate::discovery::DiscoveryClient;
use crate::manager::RegistrationStatus;

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

pub(super) struct ClientCollector {
    pub(super) client: DiscoveryClient,
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
            (
                "chi_discovery_cache_expiries",
                "Services that left the cache unused for the TTL",
                s.expiries,
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
            // Not `cached`: a scrape is neither a cache hit nor a use that keeps the service
            // cached past its TTL.
            let Some(snap) = self.client.peek(&name) else {
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

/// One label set's registration figures, summed over its instances.
#[derive(Default)]
struct Row {
    registered: i64,
    up: i64,
    failures: i64,
    reregistrations: u64,
    errors: u64,
}

pub(super) type StatusFn = Box<dyn Fn() -> Vec<RegistrationStatus> + Send + Sync>;

pub(super) struct RegistrationCollector {
    pub(super) status: StatusFn,
    pub(super) per_instance: bool,
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
        let mut rows: std::collections::BTreeMap<Labels, Row> = Default::default();
        for st in (self.status)() {
            for b in &st.backends {
                let mut labels = service(&st.instance.name);
                if self.per_instance {
                    labels.push(("instance", st.instance.id.clone()));
                }
                labels.push(("backend", b.backend.clone()));
                let row = rows.entry(labels).or_default();
                row.registered += i64::from(b.registered);
                row.up += i64::from(b.is_up());
                row.failures += i64::from(b.failures);
                row.reregistrations += b.reregistrations;
                row.errors += b.errors;
            }
        }
        let column = |f: fn(&Row) -> i64| -> Vec<(Labels, i64)> {
            rows.iter().map(|(l, r)| (l.clone(), f(r))).collect()
        };
        let total = |f: fn(&Row) -> u64| -> Vec<(Labels, u64)> {
            rows.iter().map(|(l, r)| (l.clone(), f(r))).collect()
        };
        gauge(
            &mut encoder,
            "chi_registration_registered",
            "1 when the backend holds the registration (summed per service without instance labels)",
            &column(|r| r.registered),
        )?;
        gauge(
            &mut encoder,
            "chi_registration_backend_up",
            "1 when the backend holds the registration and its last call succeeded (summed per service without instance labels)",
            &column(|r| r.up),
        )?;
        gauge(
            &mut encoder,
            "chi_registration_failures",
            "Consecutive registration / keep-alive failures",
            &column(|r| r.failures),
        )?;
        counter(
            &mut encoder,
            "chi_registration_reregistrations",
            "Registrations made again after the backend lost them",
            &total(|r| r.reregistrations),
        )?;
        counter(
            &mut encoder,
            "chi_registration_errors",
            "Failed registration and keep-alive calls",
            &total(|r| r.errors),
        )
    }
}

/// Per service, the picks a circuit breaker refused since the start.
pub(super) type OverflowFn = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

pub(super) struct OverflowCollector {
    pub(super) overflows: OverflowFn,
}

impl fmt::Debug for OverflowCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OverflowCollector").finish_non_exhaustive()
    }
}

impl Collector for OverflowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut rows: Vec<(Labels, u64)> = (self.overflows)()
            .into_iter()
            .map(|(name, n)| (service(&name), n))
            .collect();
        rows.sort();
        counter(
            &mut encoder,
            "chi_circuit_breaker_overflows",
            "Calls refused at once because every instance was at its in-flight bound",
            &rows,
        )
    }
}
