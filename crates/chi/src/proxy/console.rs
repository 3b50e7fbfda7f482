//! What the console at `/ui` on the proxy's admin port shows of the proxy: per service it has
//! routed, the strategy, the picks each instance got over the last minute (counted beside the
//! selection metric, [`crate::console::picks`]), the instances outlier detection ejected (which
//! the proxy also marks unhealthy: their health's "why"), the circuit breaker's refusals and the
//! slow-start ramps in progress. Read-only: the proxy's admin port never writes.

use std::sync::{Arc, Weak};

use axum::Router;
use chi_discovery::{HealthStatus, Registry};
use tokio::time::Instant;

use super::Proxy;
use super::service::Service;
use crate::console::model::{Balancing, BreakerRow, Ejection, RampRow, ServiceBalance, Share};
use crate::console::picks::WINDOW;
use crate::console::{Console, Feed, Verdict, Verdicts, WriteGate};
use crate::sync;

/// The console's routes for `proxy`.
pub(super) fn console(proxy: &Arc<Proxy>, registry: Arc<dyn Registry>) -> Router {
    let feed = ProxyFeed {
        proxy: Arc::downgrade(proxy),
    };
    let gate = WriteGate::ReadOnly {
        how: "chi proxy's console never writes",
    };
    Console::new("proxy", registry, Arc::new(feed), gate).routes()
}

struct ProxyFeed {
    proxy: Weak<Proxy>,
}

impl ProxyFeed {
    /// The services the proxy has routed, by name.
    fn services(&self) -> Option<(Arc<Proxy>, Vec<Arc<Service>>)> {
        let proxy = self.proxy.upgrade()?;
        let mut services: Vec<Arc<Service>> =
            sync::read(&proxy.services).values().cloned().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Some((proxy, services))
    }
}

fn remaining_ms(until: Instant) -> u64 {
    let left = until.saturating_duration_since(Instant::now());
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
}

impl Feed for ProxyFeed {
    fn verdicts(&self) -> Verdicts {
        let Some((_, services)) = self.services() else {
            return Verdicts::new();
        };
        let mut out = Verdicts::new();
        for s in services {
            let outliers = s.state.outliers();
            let failures = outliers.config().consecutive_failures;
            for id in outliers.ejected() {
                let back = outliers.ejected_until(&id).map_or(0, remaining_ms);
                let why = format!(
                    "ejected by this proxy after {failures} failed requests in a row; back in {}",
                    humantime::format_duration(std::time::Duration::from_secs(back.div_ceil(1000)))
                );
                let verdict = Verdict {
                    health: HealthStatus::Unhealthy,
                    why: Some(why),
                };
                out.insert((s.name.clone(), id), verdict);
            }
        }
        out
    }

    fn balancing(&self, services: &crate::console::Merged) -> Balancing {
        let Some((proxy, routed)) = self.services() else {
            return Balancing::default();
        };
        let strategy = proxy.routers.strategy().as_str();
        let rows = routed
            .iter()
            .map(|s| {
                let present: Vec<&str> = services
                    .get(&s.name)
                    .map(|m| m.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let outliers = s.state.outliers();
                let ejections = outliers
                    .ejected()
                    .into_iter()
                    .map(|id| Ejection {
                        remaining_ms: outliers.ejected_until(&id).map_or(0, remaining_ms),
                        times: outliers.ejection_multiplier(&id),
                        id,
                    })
                    .collect();
                let breaker = s.state.breaker().map(|b| BreakerRow {
                    max_requests: b.max_requests(),
                    refusals: b.overflows(),
                    in_flight: present
                        .iter()
                        .map(|id| ((*id).to_owned(), b.in_flight(id)))
                        .filter(|(_, n)| *n > 0)
                        .collect(),
                });
                let ramps = s
                    .state
                    .router()
                    .ramps()
                    .into_iter()
                    .map(|r| RampRow {
                        percent: (r.factor * 100.0).round() as u32,
                        remaining_ms: u64::try_from(r.remaining.as_millis()).unwrap_or(u64::MAX),
                        id: r.id,
                    })
                    .collect();
                ServiceBalance {
                    service: s.name.clone(),
                    strategy: strategy.to_owned(),
                    window: WINDOW,
                    picks: proxy
                        .picks
                        .shares(&s.name, &present)
                        .into_iter()
                        .map(|(id, picks)| Share { id, picks })
                        .collect(),
                    ejections,
                    breaker,
                    ramps,
                }
            })
            .collect();
        Balancing {
            note: None,
            services: rows,
        }
    }
}
