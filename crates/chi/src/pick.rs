//! Picking an instance for one request: the configured routing (version, then zone / region) and
//! balancer, as one [`Picker`] per service. `chi proxy` and `chi select` share it.

use std::sync::Arc;

use chi_discovery::balance::{Balancer, BalancerConfig, Strategy, usable_by_health};
use chi_discovery::config::{Config, RoutingConfig};
use chi_discovery::routing::{
    REGION_HEADER, Route, Routed as RoutedPick, Smart, VERSION_HEADER, ZONE_HEADER,
};
use chi_discovery::{Instance, Snapshot};
use hyper::header::HeaderMap;

use crate::failure::Failure;

/// The key of hashing strategies.
const HASH_KEY_HEADER: &str = "x-hash-key";

/// One pick. It borrows the instance from the routed subset or the snapshot (no copy of the
/// instance per request) and holds the balancer's in-flight count until it is dropped.
pub(crate) enum Picked {
    /// The balancer's pick in the routed subset.
    Routed(RoutedPick<Balancer>),
    /// A fallback of a retry: another usable instance of the snapshot, by index.
    Other(Snapshot, usize),
}

impl Picked {
    /// The instance to call.
    pub(crate) fn instance(&self) -> &Instance {
        match self {
            Picked::Routed(r) => r.instance(),
            Picked::Other(s, i) => &s.instances()[*i],
        }
    }
}

/// What a request asks of routing and the pick.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ask<'a> {
    /// `X-Service-Version`.
    pub(crate) version: Option<&'a str>,
    /// `X-Client-Region`.
    pub(crate) region: Option<&'a str>,
    /// `X-Client-Zone`.
    pub(crate) zone: Option<&'a str>,
    /// The key of hashing strategies (`X-Hash-Key`).
    pub(crate) key: Option<&'a [u8]>,
}

impl<'a> Ask<'a> {
    /// From the routing headers and `X-Hash-Key`.
    pub(crate) fn from_headers(headers: &'a HeaderMap) -> Self {
        // Most requests carry none of them: one pass over the names instead of four lookups.
        let asks = headers.keys().any(|k| {
            matches!(
                k.as_str(),
                VERSION_HEADER | REGION_HEADER | ZONE_HEADER | HASH_KEY_HEADER
            )
        });
        if !asks {
            return Ask::default();
        }
        let route = Route::from_headers(headers);
        Ask {
            version: route.version,
            region: route.region,
            zone: route.zone,
            key: headers.get(HASH_KEY_HEADER).map(|v| v.as_bytes()),
        }
    }

    fn route(&self) -> Route<'a> {
        Route {
            version: self.version,
            region: self.region,
            zone: self.zone,
            key: self.key,
        }
    }
}

/// Picks instances of one service.
pub(crate) trait Picker: Send + Sync + 'static {
    /// Picks for `ask`, avoiding the instances in `tried` (earlier attempts of the same request)
    /// while another one is usable.
    fn pick(&self, snapshot: &Snapshot, ask: &Ask<'_>, tried: &[String]) -> Option<Picked>;

    /// The balancer's strategy name.
    fn strategy(&self) -> &'static str;
}

/// Makes one [`Picker`] per service from the config.
#[derive(Clone)]
pub(crate) struct Pickers {
    balancer: BalancerConfig,
    routing: RoutingConfig,
}

impl Pickers {
    /// From `load_balancer` and `routing` of the config.
    pub(crate) fn from_config(config: &Config) -> anyhow::Result<Pickers> {
        Self::build(config, config.load_balancer.strategy)
    }

    /// With another strategy than the config's.
    pub(crate) fn with_strategy(config: &Config, strategy: &str) -> anyhow::Result<Pickers> {
        let parsed: Strategy = strategy.parse().map_err(|e: String| {
            Failure::bad_input(format!("strategy {strategy:?}: {e}"))
                .hint("e.g. --strategy round_robin, or load_balancer.strategy in the config")
        })?;
        Self::build(config, parsed)
    }

    fn build(config: &Config, strategy: Strategy) -> anyhow::Result<Pickers> {
        let lb = &config.load_balancer;
        let mut balancer = BalancerConfig::new(strategy);
        balancer.health_check_enabled = lb.health_check_enabled;
        balancer.consistent_hash = lb.consistent_hash;
        balancer
            .validate()
            .map_err(|e| Failure::bad_input(format!("service_discovery.load_balancer.{e}")))?;
        Ok(Pickers {
            balancer,
            routing: config.routing.clone(),
        })
    }

    /// A picker for one service.
    pub(crate) fn make(&self) -> Arc<dyn Picker> {
        let config = self.balancer.clone();
        let smart = Smart::from_config(&self.routing, move || {
            Balancer::with_config(config.clone()).unwrap_or_else(|_| Balancer::new(config.strategy))
        });
        Arc::new(Routed {
            smart,
            strategy: self.balancer.strategy.as_str(),
        })
    }
}

/// Routing, then one balancer per routed subset: [`Smart`] over [`Balancer`].
struct Routed {
    smart: Smart<Balancer>,
    strategy: &'static str,
}

impl Picker for Routed {
    fn pick(&self, snapshot: &Snapshot, ask: &Ask<'_>, tried: &[String]) -> Option<Picked> {
        let route = ask.route();
        // A retry asks the balancer again (it moves on), then takes any other instance of the
        // routed subset, then any other usable instance of the service.
        let rounds = if tried.is_empty() { 1 } else { 3 };
        for _ in 0..rounds {
            let routed = self.smart.pick(snapshot, &route)?;
            if !tried.contains(&routed.instance().id) {
                return Some(Picked::Routed(routed));
            }
        }
        let untried = |i: &Instance| !tried.contains(&i.id) && usable_by_health(i);
        let subset = self.smart.route(snapshot, &route)?;
        let all = snapshot.instances();
        let index = subset
            .instances()
            .iter()
            .find(|i| untried(i))
            .and_then(|other| all.iter().position(|i| i.id == other.id))
            .or_else(|| all.iter().position(untried))?;
        Some(Picked::Other(snapshot.clone(), index))
    }

    fn strategy(&self) -> &'static str {
        self.strategy
    }
}
